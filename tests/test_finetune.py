"""Fine-tuning's held-out epoch choice (compiler/training/finetune.py, KeepBest) inside Keras training."""

from __future__ import annotations

import numpy as np
import pytest


def _one_image_per_input(correct: np.ndarray, y: np.ndarray):
    """Kernel of a Dense layer over one-hot inputs (one per val image) that gets exactly the
    images flagged in `correct` right."""
    kernel = np.zeros((len(y), 2), np.float32)
    kernel[np.arange(len(y)), np.where(correct, y, 1 - y)] = 1.0
    return [kernel, np.zeros(2, np.float32)]


@pytest.mark.parametrize("extra_correct, kept", [(1, False), (15, True)])
def test_held_out_early_stopping_replaces_the_start_only_beyond_noise(extra_correct, kept):
    """KeepBest given the val images: an epoch one image better than the probe on val does not
    replace it; one fifteen images better (of 100) does."""
    from edgetl._compat import keras
    from edgetl.compiler.training.finetune import KeepBest

    n = 100
    y = np.arange(n) % 2
    x = np.eye(n, dtype=np.float32)
    start_correct = np.arange(n) < 80
    best_correct = np.arange(n) < 80 + extra_correct
    model = keras.Sequential([keras.Input((n,)), keras.layers.Dense(2, activation="softmax")])
    start, best = _one_image_per_input(start_correct, y), _one_image_per_input(best_correct, y)
    model.set_weights(start)
    keep = KeepBest(patience=3, baseline=(0.80, 1.0), val=(x, y))
    keep.set_model(model)
    keep.on_train_begin()
    model.set_weights(best)
    keep.on_epoch_end(0, {"val_accuracy": best_correct.mean(), "val_loss": 0.5})
    keep.on_train_end()

    assert keep.versus_start["best_epochs"] == 1 and keep.versus_start["significant"] == kept
    assert keep.best_epoch == (1 if kept else 0)
    assert keep.best[0] == pytest.approx(best_correct.mean() if kept else 0.80)
    got = model.predict(x, verbose=0).argmax(1) == y
    assert np.array_equal(got, best_correct if kept else start_correct)


def test_epoch_progress_counts_only_the_epochs_this_fit_ran():
    """A fit resumed at epoch 3 of 5 runs 2 epochs, and EpochProgress counts 2 (the divisor of
    seconds_per_epoch in finetune._fit and compress.fine_tune), not 5."""
    from edgetl._compat import keras
    from edgetl.compiler.training.finetune import EpochProgress

    advanced = []
    progress = EpochProgress(lambda n, status: advanced.append(n))
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    x, y = np.zeros((4, 3), np.float32), np.array([0, 1, 0, 1])
    model.fit(x, y, initial_epoch=3, epochs=5, callbacks=[progress], verbose=0)
    assert progress.ended == 2 and advanced == [1, 1]


def test_a_resumed_fit_that_beats_nothing_ends_on_the_probe_not_on_the_restored_weights(monkeypatch):
    """A backup restored at the fit's start (BackupAndRestore in multi-device runs) replaces the
    weights before KeepBest's on_train_begin; when no epoch beats the probe's score, the model
    must end on the probe's weights, which is what the record says it deploys."""
    from edgetl._compat import keras
    from edgetl.compiler.training import finetune

    class Restore(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.model.set_weights([w + 1.0 for w in self.model.get_weights()])

    monkeypatch.setattr(finetune, "fit_callbacks", lambda: [Restore()])
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy", metrics=["accuracy"])
    probe = [w.copy() for w in model.get_weights()]
    x, y = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]], np.array([0, 1, 0, 1])
    keep = finetune.KeepBest(patience=3, baseline=(1.0, 0.0))  # a score no epoch can beat
    result = finetune._fit(model, (x, y), (x, y), 2, keep, "resumed", batch_size=4, val_batch_size=4)
    assert result.best_epoch == 0
    for got, want in zip(model.get_weights(), probe):
        np.testing.assert_array_equal(got, want)
