"""tf.data pipelines over decoded images, on disk (DiskImages) or in memory (NumPy arrays).

Training draws a shuffled order of *indices* (8 bytes each) and reads each image from disk
in parallel map calls, so only the batches in flight are in memory. Shuffling indices with
the same seed and buffer draws the same order as shuffling the images themselves did, so a
compile sees its images in the same order as before.

Every dataset here shards by data (`AutoShardPolicy.DATA`): under MultiWorkerMirroredStrategy
each worker keeps every k-th batch, which works whatever the source (there are no files to
shard by); on one machine the option does nothing.
"""

from __future__ import annotations

import numpy as np

from edgetl._compat import tf
from edgetl.compiler.data.image_store import DiskImages


def _sharded(ds):
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _reader(x: DiskImages):
    """A tf function: index tensor (scalar or vector) -> uint8 pixels read from disk."""
    size = x.size

    def read_one(i):
        image = tf.numpy_function(lambda j: x.read(np.array([j], np.int64))[0], [i], tf.uint8, stateful=False)
        image.set_shape([size, size, 3])
        return image

    def read_many(indices):
        images = tf.numpy_function(lambda js: x.read(js), [indices], tf.uint8, stateful=False)
        images.set_shape([None, size, size, 3])
        return images

    return read_one, read_many


def shuffled_elements(x, y, seed: int, label_dtype=None):
    """Shuffled (image uint8, label) elements, reshuffled every epoch; images read lazily from disk."""
    y = np.asarray(y) if label_dtype is None else np.asarray(y).astype(label_dtype)
    if not isinstance(x, DiskImages):  # in memory: as before
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        return ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    read_one, _ = _reader(x)
    labels = tf.constant(y)
    ds = tf.data.Dataset.range(len(x)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.map(lambda i: (read_one(i), tf.gather(labels, i)), num_parallel_calls=tf.data.AUTOTUNE)


def augmented_batches(x, y, batch_size: int, seed: int, augment, label_dtype=None):
    """The training input: shuffled, augmented, batched, prefetched.

    `augment(image, label, seed)` must draw its randomness from `seed` alone (stateless ops).
    Each element gets its seed from one seeded stream, in order, before the parallel map: with
    stateful random ops, which image got which crop depended on how the map's threads were
    scheduled, so the same --seed trained a different model each run (and two recipes compared
    under cross-validation did not see the same crops). The stream is new every epoch."""
    ds = shuffled_elements(x, y, seed, label_dtype)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.zip(ds, seeds).map(lambda element, s: augment(*element, s), num_parallel_calls=tf.data.AUTOTUNE)
    return _sharded(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))


def eval_batches(x, y, batch_size: int):
    """(images, labels) in order, batched: for evaluate() and validation_data."""
    if not isinstance(x, DiskImages):
        ds = tf.data.Dataset.from_tensor_slices((x, np.asarray(y))).batch(batch_size)
        return _sharded(ds)
    _, read_many = _reader(x)
    labels = tf.constant(np.asarray(y))
    ds = tf.data.Dataset.range(len(x)).batch(batch_size)
    ds = ds.map(lambda idx: (read_many(idx), tf.gather(labels, idx)), num_parallel_calls=tf.data.AUTOTUNE)
    return _sharded(ds.prefetch(tf.data.AUTOTUNE))


def eval_data(val, batch_size: int) -> dict:
    """Keyword arguments of `evaluate` for a (images, labels) pair, in memory or on disk.

    In-memory arrays are passed as before (x, y, batch_size); images on disk become batches.
    """
    x, y = val
    if isinstance(x, DiskImages):
        return {"x": eval_batches(x, y, batch_size)}
    return {"x": x, "y": y, "batch_size": batch_size}


def validation_data(val, batch_size: int):
    """`fit(validation_data=...)` for a (images, labels) pair, in memory or on disk."""
    x, y = val
    return eval_batches(x, y, batch_size) if isinstance(x, DiskImages) else val


def iterate_batches(x, batch_size: int):
    """Consecutive batches of `x` as uint8 arrays (read from disk one batch at a time)."""
    for i in range(0, len(x), batch_size):
        yield np.asarray(x[i : i + batch_size])
