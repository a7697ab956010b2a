"""Cross-validated fine-tuning and distillation: the choices of compiler/training/crossval.py, trained.

For a model whose probe (compiler/training/probe.py) is already fitted on all labelled images:

1. Per fold: the backbone as pretrained plus a probe fitted on the fold's training part (its C
   and feature columns chosen by cross-validation inside that part, so the fold's held-out
   labels choose nothing), then fine-tuning (teacher) or distillation (student) of the top for E epochs on that
   part, scoring the held-out part after every epoch. Epoch 0 is the probe itself.
   With several recipes (learning rate and depth for fine-tuning; temperature and the
   teacher's share for distillation: CompileConfig.finetune_recipes, distill_recipes), step 1
   runs once per recipe.
2. `crossval.choose_recipe` picks the recipe and the number of epochs (0: keep the probe).
3. Refit: the model trained on all labelled images with that recipe for exactly that many
   epochs (no validation split, so no early stopping: the epochs were chosen by CV).

The fold teachers a student is distilled from in its own folds are the teacher's fold models,
so no image a student's fold holds out was trained on by its teacher. Each fold's teacher is
taken at the recipe and epochs the rule picks from the other folds' scores alone
(`crossval.fold_choices`), so no held-out label chooses the teacher it is scored through
either: the student's estimate is as honest as the teacher's. They are kept as the trainable
weights of each fold (the frozen part is the same for all), on disk while the curve is run.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from edgetl._compat import keras, tf
from edgetl.compiler.training.crossval import choose_recipe, fold_choices, held_fold_of, stratified_folds
from edgetl.compiler.training.finetune import EpochProgress, set_trainable_top, training_dataset
from edgetl.compiler.training.probe import Probe, fit_probe, set_head
from edgetl.compiler.training.distribution import fit_callbacks
from edgetl.compiler.data.image_store import DiskImages, rows_of
from edgetl.compiler.progress import progress_bar
from edgetl.compiler.data.streaming import iterate_batches


@dataclasses.dataclass
class FoldTeacher:
    """One fold's teacher for the student's fold: the recipe and epochs chosen without that fold's
    images (epochs 0: the fold's probe), the first layer its weights are trainable from, and
    those weights."""

    recipe: str
    epochs: int
    unfreeze_from: str
    weights: list[np.ndarray]

    def to_json(self) -> dict:
        return {"recipe": self.recipe, "epochs": self.epochs, "unfreeze_from": self.unfreeze_from}


class _HeldOutCurve(keras.callbacks.Callback):
    """After every epoch: score the held-out images and keep the trainable weights on disk."""

    def __init__(self, predict_held, pred_rows, held_idx, snapshot):
        super().__init__()
        self.predict_held, self.pred_rows, self.held_idx, self.snapshot = predict_held, pred_rows, held_idx, snapshot

    def on_epoch_end(self, epoch, logs=None):
        self.pred_rows[epoch + 1, self.held_idx] = self.predict_held().argmax(1)
        self.snapshot(epoch + 1)


def batch_predictor(model, batch_size: int, dtype=tf.float32):
    """A function of images (an array or DiskImages) returning `model`'s outputs, batch by batch,
    traced once for every call it serves."""
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def predict(x: np.ndarray) -> np.ndarray:
        return np.concatenate([forward(tf.constant(batch, dtype)).numpy() for batch in iterate_batches(x, batch_size)])

    return predict


def frozen_cut(model, first_trainable: str):
    """(bottom, top): `model` cut where `first_trainable` reads its input, as two models sharing
    its layers, or None where it cannot be cut there (the layer reads the model's input or several
    tensors, or a connection from below skips past it). Building the top adds nodes to the
    layers it reuses (Keras clones the graph from an intermediate tensor), after which their
    `.input` and `.output` are ambiguous: cut a copy (`HeldOutScorer`), never a model in use."""
    layer = model.get_layer(first_trainable)
    if len(layer.inbound_nodes) != 1:
        return None
    boundary = layer.input
    if isinstance(boundary, (list, tuple)) or any(boundary is t for t in model.inputs):
        return None
    try:
        top = keras.Model(boundary, model.outputs)
    except ValueError:  # "Graph disconnected": the top also reads a tensor from below the cut
        return None
    return keras.Model(model.inputs, boundary), top


class HeldOutScorer:
    """The held-out images' predictions after each epoch of a fold, from a model trained from
    `first_trainable` up.

    Everything below `first_trainable` is frozen during a fold (batch norm included:
    finetune.set_trainable_top), so what it makes of the held-out images cannot change from one
    epoch to the next. A copy of the model is cut there (`frozen_cut`): its bottom runs once per
    fold, and each epoch only its top, with the model's current weights copied in first. Where the
    model cannot be copied or cut, every epoch runs the whole model."""

    def __init__(self, model, first_trainable: str, batch_size: int):
        self.model = model
        self.twin = self.bottom = self.top = None
        # Traced once here and shared by every fold (each fold used to trace its own).
        self.whole = batch_predictor(model, batch_size)
        try:
            twin = keras.models.clone_model(model)
        except Exception:  # noqa: BLE001 - a layer Keras cannot rebuild from its config: no copy, no cut
            return
        cut = frozen_cut(twin, first_trainable)
        if cut is not None:
            self.twin = twin
            self.bottom = batch_predictor(cut[0], batch_size)
            self.top = batch_predictor(cut[1], batch_size, cut[1].inputs[0].dtype)

    def predictor(self, x_held):
        """A function of no argument: the held-out images' class probabilities now."""
        if self.twin is None:
            return lambda: self.whole(x_held)
        boundary = []  # filled on the first call: a fold that trains no epoch never needs it

        def predict_held() -> np.ndarray:
            self.twin.set_weights(self.model.get_weights())
            if not boundary:
                boundary.append(self.bottom(x_held))
            return self.top(boundary[0])

        return predict_held


def reset_optimizer(optimizer) -> None:
    """`optimizer` as new: its step count and slots (Adam's moments) back to zero, where every
    one starts, so the next fold trains as with a fresh optimizer while the model keeps its traced
    training step (compiling again traces it again: 2.5 to 3 s a fold here, README "Speed").
    Its learning rate is not among these variables."""
    for variable in optimizer.variables:
        variable.assign(tf.zeros_like(variable))


def trainable_weights(model) -> list[np.ndarray]:
    return [w.numpy() for w in model.trainable_weights]


def assign_trainable(model, weights: list[np.ndarray]) -> None:
    for variable, value in zip(model.trainable_weights, weights, strict=True):
        variable.assign(value)


class FoldSnapshots:
    """Trainable weights per (recipe, fold, epoch), on disk in a temporary folder."""

    def __init__(self):
        self._dir = tempfile.TemporaryDirectory(prefix="edgetl-cv-")

    def save(self, recipe: int, fold: int, epoch: int, weights: list[np.ndarray]) -> None:
        np.savez(Path(self._dir.name) / f"r{recipe}_f{fold}_e{epoch}.npz", *weights)

    def load(self, recipe: int, fold: int, epoch: int) -> list[np.ndarray]:
        with np.load(Path(self._dir.name) / f"r{recipe}_f{fold}_e{epoch}.npz") as data:
            return [data[f"arr_{i}"] for i in range(len(data.files))]

    def close(self) -> None:
        self._dir.cleanup()


def fold_probes(features: np.ndarray, y: np.ndarray, splits, num_classes: int, first_columns: int | None,
                seed: int) -> list[Probe]:
    """Each fold's probe, fitted on its training part with C and the feature columns chosen by
    cross-validation inside that part (as fit_probe chooses them on all images for the deployed
    model): the images a fold holds out choose nothing, so the probe's out-of-fold score is as
    honest as training's. Fitted once per fold and shared by the recipes."""
    return [fit_probe(features[tr], y[tr], num_classes, seed=seed, first_columns=first_columns) for tr, _ in splits]


def recipe_label(label: str, recipe: str, recipes: int) -> str:
    return f"{label} ({recipe})" if recipes > 1 else label


def finetune_cv(model, *, x, y, features, num_classes: int, epochs: int,
                recipes: dict[str, tuple[float, str]], batch_size: int, folds: int, seed: int, label: str, strategy=None):
    """Out-of-fold curves of fine-tuning from the probe, one per recipe (name: (learning rate,
    first layer unfrozen)); returns (choice, each fold's FoldTeacher, the splits). `model` is
    returned to its starting weights."""
    from edgetl.models import final_pool_width

    strategy = strategy or tf.distribute.get_strategy()
    start = model.get_weights()
    splits = stratified_folds(y, folds, seed)
    heads = fold_probes(features, y, splits, num_classes, final_pool_width(model), seed)
    names = list(recipes)
    pred = np.zeros((len(names), epochs + 1, len(y)), np.int64)
    snapshots = FoldSnapshots()
    try:
        for r, name in enumerate(names):
            learning_rate, unfreeze_from = recipes[name]
            scorer = HeldOutScorer(model, unfreeze_from, batch_size) if epochs else None
            for f, (tr, ho) in enumerate(splits):
                model.set_weights(start)
                head = heads[f]
                set_head(model, head)
                pred[r, 0, ho] = head.predict_proba(features[ho]).argmax(1)
                set_trainable_top(model, unfreeze_from)  # the same layers in every fold of the recipe
                if f == 0:  # compiled, and so traced, once per recipe
                    with strategy.scope():
                        model.compile(keras.optimizers.Adam(learning_rate), keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
                else:
                    reset_optimizer(model.optimizer)
                snapshots.save(r, f, 0, trainable_weights(model))
                if epochs:
                    curve = _HeldOutCurve(scorer.predictor(rows_of(x, ho)), pred[r], ho,
                                          lambda e, r=r, f=f: snapshots.save(r, f, e, trainable_weights(model)))
                    # Every recipe's fold draws the same crops and dropout masks, so recipes
                    # differ by their setting, not by their random numbers.
                    keras.utils.set_random_seed(seed + f)
                    with progress_bar(f"{recipe_label(label, name, len(names))}: fold {f + 1}/{len(splits)}", epochs) as advance:
                        model.fit(training_dataset(rows_of(x, tr), y[tr], batch_size, seed + f), epochs=epochs,
                                  callbacks=[*fit_callbacks(), curve, EpochProgress(advance)], verbose=0)
        held_fold = held_fold_of(splits, len(y))
        choice = choose_recipe(pred == y[None, None, :], len(splits), pred, names, held_fold=held_fold)
        picks = fold_choices(pred == y[None, None, :], held_fold, names)
        fold_teachers = [FoldTeacher(names[r], e, recipes[names[r]][1], snapshots.load(r, f, e)) for f, (r, e) in enumerate(picks)]
    finally:
        snapshots.close()
        model.set_weights(start)
    return choice, fold_teachers, splits


def distill_cv(student, teacher, *, unfreeze_from: str, fold_teachers: list[FoldTeacher] | None, splits, x_student, x_views, y, unlabeled_views, features, num_classes: int, epochs: int,
               learning_rate: float, batch_size: int, settings: dict[str, tuple[float, float]], seed: int, label: str,
               strategy=None):
    """Out-of-fold curves of distillation (teacher None: labels only) from the student's probe,
    one per setting (name: (temperature, alpha)).

    x_student: labelled images at the student's size (for scoring); x_views: the same images at
    the view size the distillation step resizes from; unlabeled_views: extra images (label -1)
    that feed the soft term in every fold. Teacher and student are returned to their weights.
    """
    from edgetl.compiler.training.distill import Distiller, TeacherLogits, distillation_dataset, logits_model

    from edgetl.models import final_pool_width

    strategy = strategy or tf.distribute.get_strategy()
    student_start = student.get_weights()
    heads = fold_probes(features, y, splits, num_classes, final_pool_width(student), seed)
    teacher_start = teacher.get_weights() if teacher is not None else None
    names = list(settings)
    pred = np.zeros((len(names), epochs + 1, len(y)), np.int64)
    scorer = HeldOutScorer(student, unfreeze_from, batch_size) if epochs else None
    # The settings of a fold train on the same batches through the same fold teacher: its logits
    # are computed by the first and read back by the others (one device; see TeacherLogits).
    share = teacher is not None and len(names) > 1 and strategy.num_replicas_in_sync == 1
    memo = TeacherLogits(num_classes) if share else None
    try:
        for r, name in enumerate(names):
            temperature, alpha = settings[name]
            distiller = None  # built, compiled and so traced once per setting, at its first fold
            for f, (tr, ho) in enumerate(splits):
                student.set_weights(student_start)
                head = heads[f]
                set_head(student, head)
                pred[r, 0, ho] = head.predict_proba(features[ho]).argmax(1)
                if not epochs:
                    continue
                if teacher is not None:
                    teacher.set_weights(teacher_start)
                    set_trainable_top(teacher, fold_teachers[f].unfreeze_from)
                    assign_trainable(teacher, fold_teachers[f].weights)
                keras.utils.set_random_seed(seed + f)
                set_trainable_top(student, unfreeze_from)
                if distiller is None:
                    distiller = Distiller(logits_model(student), logits_model(teacher) if teacher is not None else None, temperature, alpha,
                                          teacher_logits=memo)
                    with strategy.scope():
                        distiller.compile(optimizer=keras.optimizers.Adam(learning_rate))
                else:
                    reset_optimizer(distiller.optimizer)
                if memo is not None:
                    memo.start(f)
                curve = _HeldOutCurve(scorer.predictor(rows_of(x_student, ho)), pred[r], ho, lambda e: None)
                xv, yv = rows_of(x_views, tr), y[tr]
                if unlabeled_views is not None and len(unlabeled_views) and teacher is not None:
                    xv = xv.concat(unlabeled_views) if isinstance(xv, DiskImages) else np.concatenate([xv, unlabeled_views])
                    yv = np.concatenate([yv, np.full(len(unlabeled_views), -1, yv.dtype)])
                with progress_bar(f"{recipe_label(label, name, len(names))}: fold {f + 1}/{len(splits)}", epochs) as advance:
                    distiller.fit(distillation_dataset(xv, yv, batch_size, seed + f), epochs=epochs,
                                  callbacks=[*fit_callbacks(), curve, EpochProgress(advance)], verbose=0)
        choice = choose_recipe(pred == y[None, None, :], len(splits), pred, names, held_fold=held_fold_of(splits, len(y)))
    finally:
        student.set_weights(student_start)
        if teacher is not None:
            teacher.set_weights(teacher_start)
    return choice


def fit_fixed(trained, dataset, epochs: int, description: str) -> None:
    """Train for exactly `epochs` epochs (the number cross-validation chose): no early stopping."""
    if epochs <= 0:
        return
    with progress_bar(description, epochs) as advance:
        trained.fit(dataset, epochs=epochs, callbacks=[*fit_callbacks(), EpochProgress(advance)], verbose=0)
