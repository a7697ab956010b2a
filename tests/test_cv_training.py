"""Cross-validated training (compiler/training/cv_training.py) on a tiny model: the recipes searched
are compared on the same random numbers."""

from __future__ import annotations

import numpy as np

from conftest import colour_images


def test_recipes_share_their_random_numbers_so_only_the_setting_differs():
    from edgetl.compiler.training.cv_training import finetune_cv
    from edgetl.compiler.training.finetune import extract_features
    from edgetl.models import create_model, get_config

    x, _ = colour_images(36, seed=0)
    y = np.random.default_rng(1).integers(0, 4, 36)  # random labels: every epoch's score hangs on the crops and dropout drawn
    model = create_model("tiny_cnn", weights=None, num_classes=4)
    features = extract_features(model, x, 12, "features")
    # Two recipes with the same setting under different names: their curves must be the same;
    # the deeper one trains more layers, so its curve differs.
    top = get_config("tiny_cnn").unfreeze_from
    choice, fold_teachers, splits = finetune_cv(
        model, x=x, y=y, features=features, num_classes=4, epochs=3,
        recipes={"first": (0.05, top), "second": (0.05, top), "deeper": (0.05, get_config("tiny_cnn").deeper_unfreeze_from)},
        batch_size=6, folds=3, seed=0, label="test",
    )
    assert choice.recipes["first"] == choice.recipes["second"]
    assert choice.recipes["deeper"] != choice.recipes["first"]
    assert len(fold_teachers) == len(splits) == 3


def test_augmentation_is_the_same_for_a_seed_whatever_the_threads_and_new_each_epoch():
    """The parallel map once handed stateful random draws to whichever image came first, so a
    seed did not fix the crops; each image now carries its own stateless seed."""
    from edgetl.compiler.training.finetune import training_dataset

    x, y = colour_images(24, seed=2)

    def epochs(seed: int, n: int = 2):
        ds = training_dataset(x, y, 8, seed)
        return [np.concatenate([images.numpy() for images, _ in ds]) for _ in range(n)]

    first, second = epochs(0), epochs(0)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])  # a new order and new crops every epoch
    assert not np.array_equal(first[0], epochs(1, 1)[0])  # another seed, other crops
