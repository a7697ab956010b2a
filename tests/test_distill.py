"""The distillation loss and trainer on problems small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl._compat import keras, tf
from edgetl.compiler.training.distill import Distiller, distillation_loss


def _logits(rng, n=8, k=5):
    return tf.constant(rng.normal(0, 3, (n, k)), tf.float32)


def test_with_no_teacher_share_the_loss_is_exactly_cross_entropy():
    rng = np.random.default_rng(0)
    student, teacher = _logits(rng), _logits(rng)
    labels = tf.constant(rng.integers(0, 5, 8))
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, student)
    for t in (1.0, 4.0):
        loss = distillation_loss(labels, student, teacher, temperature=t, alpha=0.0)
        np.testing.assert_allclose(loss.numpy(), ce.numpy(), rtol=1e-6)


def test_soft_term_is_temperature_squared_kl_and_ignores_labels():
    rng = np.random.default_rng(1)
    student, teacher = _logits(rng), _logits(rng)
    t = 3.0

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p_t, p_s = softmax(teacher.numpy() / t), softmax(student.numpy() / t)
    expected = t * t * np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1))
    unlabelled = tf.fill([8], -1)
    labelled = tf.constant(rng.integers(0, 5, 8))
    for labels in (unlabelled, labelled):
        loss = distillation_loss(labels, student, teacher, temperature=t, alpha=1.0)
        np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)


def test_unlabelled_images_add_nothing_to_the_label_term():
    rng = np.random.default_rng(2)
    student, teacher = _logits(rng), _logits(rng)
    labels = np.array([0, 1, 2, 3, -1, -1, -1, -1])
    loss = distillation_loss(tf.constant(labels), student, teacher, temperature=2.0, alpha=0.0)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels[:4], student[:4])
    np.testing.assert_allclose(loss.numpy(), ce.numpy(), rtol=1e-6)


def _dense_model(name, weights=None):
    inputs = keras.Input((2,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden), name=name)
    if weights is not None:
        model.set_weights(weights)
    return model


def test_a_student_learns_the_teachers_decision_from_its_outputs_alone():
    """No labels at all: everything the student knows comes from the teacher's soft targets."""
    keras.utils.set_random_seed(0)
    # Teacher: a fixed rule on 2-D points (a circle), as logits.
    teacher_in = keras.Input((2,))
    radius = keras.layers.Lambda(lambda x: 3.0 * (1.0 - tf.reduce_sum(x * x, axis=1, keepdims=True)))(teacher_in)
    teacher = keras.Model(teacher_in, keras.layers.Concatenate()([radius, -radius]), name="teacher")
    student = _dense_model("student")

    rng = np.random.default_rng(0)
    x = rng.uniform(-1.5, 1.5, (2048, 2)).astype(np.float32)
    unlabelled = -np.ones(len(x), np.int32)
    distiller = Distiller(student, teacher, temperature=2.0, alpha=1.0)
    distiller.compile(optimizer=keras.optimizers.Adam(0.01))
    distiller.fit(x, unlabelled, batch_size=64, epochs=30, verbose=0)

    fresh = rng.uniform(-1.5, 1.5, (1000, 2)).astype(np.float32)
    agreement = np.mean(student(fresh).numpy().argmax(1) == teacher(fresh).numpy().argmax(1))
    assert agreement >= 0.95
    # ...and the baseline path (no teacher) cannot learn anything from unlabelled points.
    untrained = _dense_model("untrained")
    chance = np.mean(untrained(fresh).numpy().argmax(1) == teacher(fresh).numpy().argmax(1))
    assert agreement > chance + 0.2


def test_baseline_never_runs_the_teacher():
    calls = []
    teacher_in = keras.Input((2,))
    counted = keras.layers.Lambda(lambda x: (calls.append(1), x)[1])(teacher_in)
    teacher = keras.Model(teacher_in, keras.layers.Dense(2)(counted))
    calls.clear()  # building the graph called the layer once
    student = _dense_model("student")
    distiller = Distiller(student, teacher, temperature=2.0, alpha=0.0)
    distiller.compile(optimizer=keras.optimizers.Adam(0.01), run_eagerly=True)
    x = np.zeros((8, 2), np.float32)
    distiller.fit(x, np.zeros(8, np.int32), epochs=1, verbose=0)
    assert calls == []


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_student_and_teacher_see_one_view_at_their_own_sizes(alpha):
    seen = {}

    def image_model(size, name):
        inputs = keras.Input((size, size, 3))
        x = keras.layers.Lambda(lambda t: (seen.setdefault(name, t.shape), t)[1])(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(3)(x), name=name)

    student, teacher = image_model(16, "student"), image_model(24, "teacher")
    seen.clear()  # building the graphs called the layers once
    distiller = Distiller(student, teacher, temperature=2.0, alpha=alpha)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))
    distiller.fit(np.zeros((4, 24, 24, 3), np.float32), np.zeros(4, np.int32), epochs=1, verbose=0)
    assert tuple(seen["student"][1:3]) == (16, 16)
    assert ("teacher" in seen) == (alpha > 0)


def _image_models(num_classes=3):
    def image_model(name):
        inputs = keras.Input((16, 16, 3))
        x = keras.layers.Conv2D(4, 3, activation="relu")(inputs / 255.0)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name=name)

    keras.utils.set_random_seed(0)
    return image_model("student"), image_model("teacher")


def _distil(student, teacher, start, x, y, seed, memo=None, epochs=2):
    from edgetl.compiler.training.distill import distillation_dataset

    student.set_weights(start)
    if memo is not None:
        memo.start()
    keras.utils.set_random_seed(seed)
    distiller = Distiller(student, teacher, temperature=2.0, alpha=0.5, teacher_logits=memo)
    distiller.compile(optimizer=keras.optimizers.Adam(0.01))
    distiller.fit(distillation_dataset(x, y, 4, seed), epochs=epochs, verbose=0)
    return [w.copy() for w in student.get_weights()]


def test_settings_trained_on_the_same_batches_run_the_teacher_once_and_train_as_before():
    """Cross-validation's distillation settings share a fold's batches: the second reads the
    first's teacher logits instead of running the teacher, and trains exactly as if it had run it."""
    from edgetl.compiler.training.distill import TeacherLogits

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10, 16, 16, 3)).astype(np.uint8)
    y = rng.integers(0, 3, 10).astype(np.int32)
    student, teacher = _image_models()
    start = student.get_weights()
    plain = _distil(student, teacher, start, x, y, seed=1)
    memo = TeacherLogits(3)
    first = _distil(student, teacher, start, x, y, seed=1, memo=memo)
    steps = 2 * 3  # 2 epochs of 3 batches (4, 4, 2 images)
    assert (memo.computed, memo.reused) == (steps, 0)
    second = _distil(student, teacher, start, x, y, seed=1, memo=memo)
    assert (memo.computed, memo.reused) == (steps, steps)  # the teacher did not run again
    for a, b, c in zip(plain, first, second):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-6)


def test_a_batch_that_is_not_the_recorded_one_runs_the_teacher():
    """Other crops or another order (here another seed) are never given recorded logits; nor is
    a batch that differs from the recorded one only by a horizontal flip."""
    from edgetl.compiler.training.distill import TeacherLogits

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (8, 16, 16, 3)).astype(np.uint8)
    y = rng.integers(0, 3, 8).astype(np.int32)
    student, teacher = _image_models()
    start = student.get_weights()
    memo = TeacherLogits(3)
    _distil(student, teacher, start, x, y, seed=1, memo=memo, epochs=1)
    other_seed = _distil(student, teacher, start, x, y, seed=2, memo=memo, epochs=1)
    assert memo.reused == 0 and memo.computed == 4
    np.testing.assert_allclose(other_seed[0], _distil(student, teacher, start, x, y, seed=2, epochs=1)[0], rtol=1e-5, atol=1e-6)

    batch = tf.constant(x[:4], tf.float32)
    labels = tf.constant(y[:4])
    check = TeacherLogits.check_of(batch, labels).numpy()
    flipped = TeacherLogits.check_of(tf.image.flip_left_right(batch), labels).numpy()
    memo = TeacherLogits(3)
    memo.lookup(check)
    memo.store(check, np.ones((4, 3), np.float32))
    memo.start()
    assert not memo.lookup(flipped)[0]
    memo.start()
    found, logits = memo.lookup(check)
    assert found and np.array_equal(logits, np.ones((4, 3)))
