"""A model of the user's own kind, for `edgetl compile --model`: plain tf_keras, trained elsewhere.

    python -m edgetl.benchmarks.train_own_model [--data ../shared/datasets/flowers12] [--out build/own]

What a user's own training script looks like, and nothing of edgetl in it: a MobileNetV2
backbone (keras.applications, width 0.35, trained from scratch: no ImageNet weights are
available offline here) nested inside a functional model with its own head (pooling, dropout,
Dense with a softmax), images read with `image_dataset_from_directory`, the normalisation
(pixels / 127.5 - 1, what `--preprocess tf` means) and the augmentation done in the input
pipeline, outside the model. Trained on DATA/train only, so DATA/test stays unseen by it.

It writes OUT/own_model.keras and prints its accuracy on DATA/test with a 95% Wilson interval
(compiler/evaluation/stats.py), then the edgetl command that compiles it. On 720 flower photos a network
trained from scratch for a few minutes is weak; the point is the compile, not this model.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# ../shared from the main checkout, ../../shared from a worktree under wt/ ($EDGETL_SHARED wins).
_SHARED = [Path(os.environ["EDGETL_SHARED"])] if "EDGETL_SHARED" in os.environ else [REPO.parent / "shared", REPO.parent.parent / "shared"]
DEFAULT_DATA = next((p / "datasets" / "flowers12" for p in _SHARED if (p / "datasets" / "flowers12").is_dir()), _SHARED[0] / "datasets" / "flowers12")


def build(num_classes: int, size: int, alpha: float):
    """MobileNetV2 (from scratch) as a nested backbone under the user's own head."""
    from edgetl._compat import keras

    backbone = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha, include_top=False, weights=None)
    # keras.applications' batch norms average their statistics with momentum 0.999, tuned for
    # ImageNet's 40k steps per epoch: after the ~900 steps here the moving statistics are still
    # 40% their initial values and the model scores at chance in inference mode. 0.9 converges.
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    inputs = keras.Input((size, size, 3), name="normalised_image")
    x = backbone(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(0.2, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name="own_mobilenetv2")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="DATA/train/<class>/* and DATA/test/<class>/*")
    parser.add_argument("--out", type=Path, default=Path("build/own"), help="where own_model.keras is written")
    parser.add_argument("--size", type=int, default=128, help="input px")
    parser.add_argument("--alpha", type=float, default=0.35, help="MobileNetV2 width multiplier")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from edgetl._compat import keras, tf
    from edgetl.compiler.evaluation.stats import describe_accuracy

    keras.utils.set_random_seed(args.seed)
    load = dict(image_size=(args.size, args.size), label_mode="int", batch_size=args.batch_size, seed=args.seed)
    train = keras.utils.image_dataset_from_directory(args.data / "train", shuffle=True, **load)
    test = keras.utils.image_dataset_from_directory(args.data / "test", shuffle=False, **load)
    classes = train.class_names

    def normalise(x, y):  # the user's preprocessing, outside the model
        return x / 127.5 - 1.0, y

    def augment(x, y):
        x = tf.image.random_flip_left_right(x)
        crop = tf.image.random_crop(x, (tf.shape(x)[0], int(args.size * 0.875), int(args.size * 0.875), 3))
        return tf.image.resize(crop, (args.size, args.size)), y

    train_data = train.map(augment).map(normalise).prefetch(2)
    test_data = test.map(normalise).prefetch(2)
    model = build(len(classes), args.size, args.alpha)
    steps = args.epochs * len(train)
    schedule = keras.optimizers.schedules.CosineDecay(2e-3, steps, alpha=0.05)
    model.compile(keras.optimizers.Adam(schedule), keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(train_data, epochs=args.epochs, verbose=2)
    seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(test_data, verbose=0)
    n = sum(int(y.shape[0]) for _, y in test)

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "own_model.keras"
    model.save(path)
    print(f"trained {model.name} ({model.count_params() / 1e6:.2f}M params, {args.size} px) from scratch on "
          f"{sum(int(y.shape[0]) for _, y in train)} images in {seconds:.0f} s ({args.epochs} epochs)")
    print(f"test accuracy (its own pipeline): {describe_accuracy(accuracy, n)}")
    print(f"saved {path}; compile it with:")
    print(f"  edgetl compile {args.data} --model {path} --preprocess tf --quantize int8 --out build/flowers-own")


if __name__ == "__main__":
    main()
