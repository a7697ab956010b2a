"""Decoded images on disk (compiler/data/image_store.py) and the tf.data pipelines over them
(compiler/data/streaming.py): same pixels, same order, same strictness as the in-memory path."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.compiler.data.datasets import load_images, scan_dataset
from edgetl.compiler.data.image_store import DiskImages, ImageFolder, rows_of, write_images
from edgetl.errors import DataError

from conftest import write_color_dataset


@pytest.fixture
def stored(tmp_path):
    root = write_color_dataset(tmp_path / "colors", per_class=7, size=20)
    dataset = scan_dataset(root, seed=0)
    samples = dataset.splits["train"]
    folder = ImageFolder(tmp_path / "images")
    return samples, write_images(samples, 16, folder.file("train", 16)), folder


def test_disk_images_hold_exactly_what_load_images_decodes(stored):
    samples, disk, _ = stored
    expected, _ = load_images(samples, 16)
    assert disk.shape == expected.shape and len(disk) == len(samples)
    np.testing.assert_array_equal(np.asarray(disk), expected)
    np.testing.assert_array_equal(np.load(disk.parts[0][0]), expected)  # a plain .npy file
    np.testing.assert_array_equal(disk[3], expected[3])
    np.testing.assert_array_equal(disk[2:5], expected[2:5])
    np.testing.assert_array_equal(disk[-1], expected[-1])
    idx = np.array([4, 0, 2])
    np.testing.assert_array_equal(disk[idx], expected[idx])
    view = rows_of(disk, idx)
    assert isinstance(view, DiskImages) and len(view) == 3
    np.testing.assert_array_equal(view[1:], expected[idx][1:])
    joined = disk.concat(view)
    np.testing.assert_array_equal(np.asarray(joined), np.concatenate([expected, expected[idx]]))
    assert disk[:0].shape == (0, 16, 16, 3)
    with pytest.raises(IndexError):
        disk.read(np.array([len(disk)]))


def test_a_file_broken_after_the_scan_fails_and_leaves_no_file(tmp_path):
    root = write_color_dataset(tmp_path / "colors", per_class=4, size=20)
    samples = scan_dataset(root, seed=0).splits["train"]
    samples[1].path.write_bytes(b"not an image any more")
    target = tmp_path / "train-16px.npy"
    with pytest.raises(DataError, match="cannot read image"):
        write_images(samples, 16, target)
    assert not target.exists() and not list(tmp_path.glob("*.partial"))


def test_streamed_training_order_equals_the_in_memory_order(stored):
    from edgetl._compat import tf
    from edgetl.compiler.data.streaming import eval_batches, shuffled_elements

    samples, disk, _ = stored
    x, _ = load_images(samples, 16)
    y = np.arange(len(x))  # labels that name the image
    memory = [int(label) for _, label in shuffled_elements(x, y, seed=3)]
    streamed = [(image.numpy(), int(label)) for image, label in shuffled_elements(disk, y, seed=3)]
    assert [label for _, label in streamed] == memory  # same seed: same order as before
    for image, label in streamed:
        np.testing.assert_array_equal(image, x[label])
    batches = list(eval_batches(disk, y, 4))
    np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in batches]), x)
    assert tf.concat([b[1] for b in batches], 0).numpy().tolist() == y.tolist()


def test_image_folder_removes_what_it_holds(tmp_path):
    temporary = ImageFolder()
    assert temporary.path.is_dir()
    temporary.remove()
    assert not temporary.path.exists()
