"""Knowledge distillation: train a small student to match the fine-tuned teacher.

Loss (Hinton et al., 2015), per batch:

    alpha * T^2 * KL(softmax(t / T) || softmax(s / T))  +  (1 - alpha) * CE(y, softmax(s))

with t, s the teacher's and the student's logits. The T^2 factor keeps the soft term's gradient
scale independent of T. The cross-entropy term is averaged over labelled images only, so
unlabelled images (label -1, e.g. photos from the device's own camera) feed the soft term alone.

Consistent views: each training step augments a batch once (random crop, flip, colour) at the
larger of the two input sizes, then resizes that one view to the teacher's and to the student's
input size, so the teacher labels exactly what the student sees. Within one training the teacher
runs once per view and no view is ever repeated (every epoch draws new crops); caching K views
per image instead would cap augmentation at K views for a saving only when epochs exceed K.
Across the settings cross-validation compares on one fold the views are the same, so their
teacher logits are computed once (`TeacherLogits`).

The no-teacher baseline is the same training with alpha = 0 (and no teacher forward pass at
all): same student, same starting point, same epochs, schedule and augmentation.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from edgetl._compat import keras, tf
from edgetl.compiler.training.finetune import KeepBest, StageResult, _fit, augment, prepare_top
from edgetl.compiler.data.streaming import augmented_batches
from edgetl.models import LOGITS_LAYER


def distillation_loss(labels, student_logits, teacher_logits, temperature: float, alpha: float):
    """The soft-target loss above; labels < 0 mark unlabelled images. Returns a scalar."""
    labels = tf.cast(labels, tf.int32)
    has_label = tf.cast(labels >= 0, tf.float32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.maximum(labels, 0), logits=student_logits)
    ce = tf.reduce_sum(ce * has_label) / tf.maximum(tf.reduce_sum(has_label), 1.0)
    if alpha == 0.0 or teacher_logits is None:
        return ce
    t = float(temperature)
    teacher_soft = tf.nn.softmax(teacher_logits / t)
    kl = tf.reduce_sum(
        teacher_soft * (tf.nn.log_softmax(teacher_logits / t) - tf.nn.log_softmax(student_logits / t)), axis=-1
    )
    return alpha * t * t * tf.reduce_mean(kl) + (1.0 - alpha) * ce


def logits_model(model):
    """The same layers, stopping at the "logits" layer (before the softmax)."""
    return keras.Model(model.input, model.get_layer(LOGITS_LAYER).output, name=f"{model.name}_logits")


class TeacherLogits:
    """The teacher's logits for every training step of each fold, kept by the first distillation
    setting that trains the fold and read back by the others (compiler/training/cv_training.py).

    Every setting of a fold trains on the same batches (the fold's seed draws the same shuffle and
    crops: compiler/data/streaming.py) through the same frozen teacher in inference mode, so its
    logits for step i are the same in every setting, and computing them again is work done twice:
    a Lite2 teacher's forward pass costs more than a Lite0 student's training step. A step's
    logits are reused only when its batch is the recorded one, checked on its labels and a grid
    of its pixels, which tells apart a flip or a shifted crop; any other batch runs the teacher
    (and its logits replace the record). `start(fold)` before each training: one object serves
    every fold, so a training step traced once reads whichever fold is being trained.
    """

    GRID = 8  # pixels sampled per side of each image for the batch check

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self._records: dict[object, list[tuple[np.ndarray, np.ndarray]]] = {}  # fold: (batch check, logits) per step
        self.reused = self.computed = 0
        self.start()

    def start(self, fold=0) -> None:
        """The next step is step 0 of `fold`'s training."""
        self._steps = self._records.setdefault(fold, [])
        self._at = 0

    @classmethod
    def check_of(cls, images, labels):
        """A batch's identity: its labels and a strided grid of each image's pixels (exact values)."""
        stride = max(1, int(images.shape[1]) // cls.GRID)
        grid = tf.reshape(tf.cast(images[:, ::stride, ::stride, :], tf.float32), [tf.shape(images)[0], -1])
        return tf.concat([tf.cast(labels[:, None], tf.float32), grid], axis=1)

    def lookup(self, check: np.ndarray):
        """(found, logits) for the next step; called once per training step, in order."""
        step = self._at
        self._at += 1
        if step < len(self._steps) and np.array_equal(self._steps[step][0], check):
            self.reused += 1
            return True, self._steps[step][1]
        return False, np.zeros((len(check), self.num_classes), np.float32)

    def store(self, check: np.ndarray, logits: np.ndarray) -> bool:
        """Keep the logits the teacher just computed for the step `lookup` last served."""
        step = self._at - 1
        record = (np.array(check), np.array(logits, np.float32))
        if step < len(self._steps):
            self._steps[step] = record
        else:
            self._steps.append(record)
        self.computed += 1
        return True


class Distiller(keras.Model):
    """Trains `student` (logits model) against `teacher` (logits model, frozen; None = baseline).

    Training batches are (pixels at `view_size`, labels); validation batches are (pixels at the
    student's own size, labels) and measure the student alone, as it will be deployed.
    teacher_logits: a TeacherLogits shared with the other settings trained on the same batches
    (one device only: with several replicas each would run its own steps in its own order).
    """

    def __init__(self, student, teacher, temperature: float, alpha: float, teacher_logits: TeacherLogits | None = None):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.memo = teacher_logits
        self.temperature = float(temperature)
        self.alpha = float(alpha) if teacher is not None else 0.0
        self.student_size = tuple(student.input_shape[1:3])
        self.teacher_size = tuple(teacher.input_shape[1:3]) if teacher is not None else None
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy]

    def call(self, inputs, training=False):
        return self.student(inputs, training=training)

    @staticmethod
    def _view(images, size):
        if tuple(images.shape[1:3]) == size:
            return images
        return tf.image.resize(images, size, method="bilinear")

    def train_step(self, data):
        images, labels = data
        teacher_logits = None
        if self.teacher is not None and self.alpha > 0:
            teacher_logits = self._teacher_logits(images, labels)
        with tf.GradientTape() as tape:
            student_logits = self.student(self._view(images, self.student_size), training=True)
            loss = distillation_loss(labels, student_logits, teacher_logits, self.temperature, self.alpha)
        variables = self.student.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        self.loss_tracker.update_state(loss)
        labelled = labels >= 0
        self.accuracy.update_state(tf.boolean_mask(labels, labelled), tf.boolean_mask(student_logits, labelled))
        return {m.name: m.result() for m in self.metrics}

    def _teacher_logits(self, images, labels):
        def run_teacher():
            # A bf16 teacher (compiler/spec/precision.py) gives bf16 logits; the loss is float32.
            return tf.cast(self.teacher(self._view(images, self.teacher_size), training=False), tf.float32)

        if self.memo is None:
            return run_teacher()
        check = TeacherLogits.check_of(images, labels)
        found, recorded = tf.numpy_function(self.memo.lookup, [check], [tf.bool, tf.float32], stateful=True)
        found.set_shape([])
        recorded.set_shape([None, self.memo.num_classes])

        def computed():
            logits = run_teacher()
            stored = tf.numpy_function(self.memo.store, [check, logits], tf.bool, stateful=True)
            with tf.control_dependencies([stored]):
                return tf.identity(logits)

        return tf.cond(found, lambda: recorded, computed)

    def test_step(self, data):
        images, labels = data
        student_logits = self.student(images, training=False)
        loss = distillation_loss(labels, student_logits, None, self.temperature, 0.0)
        self.loss_tracker.update_state(loss)
        self.accuracy.update_state(labels, student_logits)
        return {m.name: m.result() for m in self.metrics}


def distillation_dataset(x, y: np.ndarray, batch_size: int, seed: int):
    """Shuffled, augmented batches of (pixels, labels); labels -1 for unlabelled images.
    `x` in memory or on disk (DiskImages, streamed)."""
    return augmented_batches(x, y, batch_size, seed, augment, label_dtype=np.int32)


@dataclasses.dataclass
class DistillResult:
    stage: StageResult
    unfrozen_layers: int
    trainable_params: int
    temperature: float
    alpha: float
    labelled_images: int
    unlabelled_images: int
    seconds: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def train_student(
    student,
    teacher,
    *,
    unfreeze_from: str,
    train_views: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    epochs: int,
    learning_rate: float,
    batch_size: int,
    patience: int,
    temperature: float,
    alpha: float,
    seed: int,
    label: str,
    strategy=None,
) -> DistillResult:
    """Train the top of `student` (already head-initialised) in place; teacher None = baseline.

    train_views: pixels at the larger of the two input sizes, with labels (-1: unlabelled).
    val: pixels at the student's input size.
    """
    strategy = strategy or tf.distribute.get_strategy()
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)  # the distilled student and the baseline draw the same crops
    student_logits = logits_model(student)
    teacher_logits = logits_model(teacher) if teacher is not None else None
    distiller = Distiller(student_logits, teacher_logits, temperature, alpha)

    def compile_distiller():
        with strategy.scope():
            distiller.compile(optimizer=keras.optimizers.Adam(learning_rate))
            # Built before fit, so BackupAndRestore (distribution.fit_callbacks) restores the
            # optimizer's state too; Keras skips that for an unbuilt model, with a warning.
            distiller.build((None, *student_logits.input_shape[1:]))

    unfrozen, trainable, start_point = prepare_top(
        student, unfreeze_from, compile_distiller, val, batch_size, trained=distiller
    )
    keep = KeepBest(patience=patience, baseline=start_point, target=student, val=val, batch_size=batch_size)
    x, y = train_views
    stage = _fit(distiller, (distillation_dataset(x, y, batch_size, seed),), val, epochs, keep, label, val_batch_size=batch_size)
    return DistillResult(
        stage=stage,
        unfrozen_layers=unfrozen,
        trainable_params=trainable,
        temperature=temperature,
        alpha=distiller.alpha,
        labelled_images=int((y >= 0).sum()),
        unlabelled_images=int((y < 0).sum()),
        seconds=time.perf_counter() - start,
    )
