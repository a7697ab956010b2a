"""Cross-validated training (compiler/training/cv_training.py) on a tiny model: the recipes searched
are compared on the same random numbers."""

from __future__ import annotations

import numpy as np
from conftest import colour_images


def test_recipes_share_their_random_numbers_so_only_the_setting_differs(monkeypatch):
    from edgetl.compiler.training import cv_training
    from edgetl.compiler.training.finetune import extract_features
    from edgetl.models import create_model, get_config

    x, _ = colour_images(36, seed=0)
    y = np.random.default_rng(1).integers(0, 4, 36)  # random labels: every epoch's score hangs on the crops and dropout drawn
    model = create_model("tiny_cnn", weights=None, num_classes=4)
    features = extract_features(model, x, 12, "features")
    # Every out-of-fold prediction of every recipe and epoch, as the choice reads them (an
    # accuracy curve is too coarse: two recipes can score alike with different predictions).
    seen = {}
    choose = cv_training.choose_recipe

    def keep_predictions(correct, folds, pred, *args, **kwargs):
        seen["pred"] = pred.copy()
        return choose(correct, folds, pred, *args, **kwargs)

    monkeypatch.setattr(cv_training, "choose_recipe", keep_predictions)
    # Two recipes with the same setting under different names: their predictions must be the same;
    # the deeper one trains more layers, so its predictions differ.
    top = get_config("tiny_cnn").unfreeze_from
    choice, fold_teachers, splits = cv_training.finetune_cv(
        model, x=x, y=y, features=features, num_classes=4, epochs=3,
        recipes={"first": (0.01, top), "second": (0.01, top), "deeper": (0.01, get_config("tiny_cnn").deeper_unfreeze_from)},
        batch_size=6, folds=3, seed=0, label="test",
    )
    pred = seen["pred"]  # (recipes, epochs + 1, images)
    np.testing.assert_array_equal(pred[0], pred[1])
    assert choice.recipes["first"] == choice.recipes["second"]
    assert not np.array_equal(pred[2, 1:], pred[0, 1:])
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


def test_the_held_out_pass_runs_the_frozen_bottom_once_and_predicts_as_the_whole_model():
    """Each epoch's held-out scoring runs only the layers from the first trainable one up, on
    the frozen bottom's output computed once, in a copy of the model that takes its current
    weights; the predictions are the whole model's, and the model itself is left as it was."""
    from edgetl.compiler.training.cv_training import HeldOutScorer, frozen_cut
    from edgetl.models import create_model, get_config

    for name, size in (("tiny_cnn", 32), ("efficientnet_lite0", 64)):
        model = create_model(name, weights=None, num_classes=4, input_size=size)
        images, _ = colour_images(20, seed=3, size=size)
        first = get_config(name).unfreeze_from
        scorer = HeldOutScorer(model, first, 8)
        assert scorer.twin is not None and scorer.twin is not model
        predict = scorer.predictor(images)
        np.testing.assert_allclose(predict(), model.predict(images, verbose=0), rtol=1e-4, atol=1e-5)
        # Training changes the model's top: the next call follows it, on the same bottom output.
        for layer in model.layers[[layer.name for layer in model.layers].index(first):]:
            for w in layer.trainable_weights:
                w.assign(w * 1.5)
        np.testing.assert_allclose(predict(), model.predict(images, verbose=0), rtol=1e-4, atol=1e-5)
        # Cutting the copy added no node to the model's own layers, so it can be cut again.
        assert len(model.get_layer(first).inbound_nodes) == 1 and HeldOutScorer(model, first, 8).twin is not None
    # Where the first trainable layer reads the model's input, there is nothing to cut.
    assert frozen_cut(model, model.layers[1].name) is None


def test_a_skip_connection_past_the_cut_runs_the_whole_model():
    from edgetl.compiler.training.cv_training import HeldOutScorer, frozen_cut

    from edgetl._compat import keras

    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="b")(a)
    c = keras.layers.Conv2D(4, 3, padding="same", name="c")(b)
    out = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([a, c])))
    model = keras.Model(inputs, out)
    x = np.random.default_rng(0).normal(size=(5, 8, 8, 3)).astype(np.float32)
    for first, cut in (("c", False), ("b", True)):  # the sum reads a's output: below c's input, but b's input itself
        scorer = HeldOutScorer(model, first, 2)
        assert (scorer.twin is not None) == cut
        np.testing.assert_allclose(scorer.predictor(x)(), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert frozen_cut(keras.models.clone_model(model), "c") is None


def test_the_cut_leaves_the_cross_validation_curves_as_they_were(monkeypatch):
    from edgetl.compiler.training import cv_training
    from edgetl.compiler.training.finetune import extract_features
    from edgetl.models import create_model, get_config

    from edgetl._compat import keras

    x, y = colour_images(36, seed=4)
    config = get_config("tiny_cnn")

    def run():
        model = create_model("tiny_cnn", weights=None, num_classes=4)
        features = extract_features(model, x, 12, "features")
        choice, _, _ = cv_training.finetune_cv(
            model, x=x, y=y, features=features, num_classes=4, epochs=3,
            recipes={"top": (0.05, config.unfreeze_from), "deeper": (0.05, config.deeper_unfreeze_from)},
            batch_size=6, folds=3, seed=0, label="test")
        return choice

    keras.utils.set_random_seed(7)
    cut = run()
    monkeypatch.setattr(cv_training, "frozen_cut", lambda model, first: None)
    keras.utils.set_random_seed(7)
    whole = run()
    assert cut.recipes == whole.recipes and cut.oof_pred == whole.oof_pred


def test_distillation_settings_share_each_folds_teacher_logits_and_keep_their_curves(monkeypatch):
    """Both distillation settings of a fold read one set of teacher logits (the teacher runs for
    the first only), and each setting's out-of-fold curve is the one it has when trained alone."""
    from edgetl.compiler.training import cv_training, distill
    from edgetl.compiler.training.crossval import stratified_folds
    from edgetl.compiler.training.finetune import extract_features, set_trainable_top
    from edgetl.models import create_model, get_config

    from edgetl._compat import keras

    x, _ = colour_images(30, seed=5)
    y = np.random.default_rng(2).integers(0, 4, 30)  # random labels: the curves hang on every number drawn
    top = get_config("tiny_cnn").unfreeze_from
    keras.utils.set_random_seed(3)
    teacher = create_model("tiny_cnn", weights=None, num_classes=4)
    student = create_model("tiny_cnn", weights=None, num_classes=4)
    features = extract_features(student, x, 10, "features")
    splits = stratified_folds(y, 3, 0)
    set_trainable_top(teacher, top)
    fold_teachers = [cv_training.FoldTeacher("t", 0, top, cv_training.trainable_weights(teacher)) for _ in splits]
    memos = []

    class Recorded(distill.TeacherLogits):
        def __init__(self, num_classes):
            super().__init__(num_classes)
            memos.append(self)

    monkeypatch.setattr(distill, "TeacherLogits", Recorded)

    def run(settings):
        return cv_training.distill_cv(
            student, teacher, unfreeze_from=top, fold_teachers=fold_teachers, splits=splits, x_student=x, x_views=x,
            y=y, unlabeled_views=None, features=features, num_classes=4, epochs=2, learning_rate=0.05, batch_size=6,
            settings=settings, seed=0, label="test")

    built = []

    class Counted(distill.Distiller):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(distill, "Distiller", Counted)
    both = run({"soft": (2.0, 0.5), "matching": (1.0, 1.0)})
    assert len(memos) == 1  # one record for the folds, each fold's steps apart
    assert len(built) == 2  # one trainer per setting, traced at its first fold and reused by the others
    steps = sum(2 * -(-len(tr) // 6) for tr, _ in splits)  # 2 epochs of each fold's batches
    assert sum(m.computed for m in memos) == steps and sum(m.reused for m in memos) == steps
    alone = {name: run({name: setting}).accuracy_by_epoch for name, setting in {"soft": (2.0, 0.5), "matching": (1.0, 1.0)}.items()}
    assert len(memos) == 1  # one setting: nothing to share, no record kept
    assert both.recipes == alone


def test_a_reset_optimizer_trains_the_next_fold_as_a_fresh_one_would():
    """Folds of a recipe reuse the compiled model (no new trace): the optimizer's steps and
    moments go back to zero between folds, and its learning rate stays."""
    from edgetl.compiler.training.cv_training import reset_optimizer

    from edgetl._compat import keras

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 5)).astype(np.float32), rng.integers(0, 3, 32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    start = model.get_weights()

    def fold(compile_again: bool):
        model.set_weights(start)
        if compile_again:
            model.compile(keras.optimizers.Adam(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        else:
            reset_optimizer(model.optimizer)
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        return model.get_weights()

    fresh = fold(True)
    traced = model.train_function
    reused = fold(False)
    assert model.train_function is traced  # the same traced step served the second fold
    assert float(model.optimizer.learning_rate.numpy()) == np.float32(0.05)
    for a, b in zip(fresh, reused):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    assert not np.allclose(fresh[0], start[0])  # it trained
