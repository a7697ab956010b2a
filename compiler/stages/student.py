"""The student and baseline stages: the small model headed by its linear probe on cached
features, then distilled from the teacher (student) or trained on the labels alone with the same
budget (baseline, the ablation); chosen on the held-out split or by cross-validation."""

from __future__ import annotations

import dataclasses

import numpy as np

from edgetl.compiler.data.image_store import ImageCache
from edgetl.compiler.spec.config import CompileConfig
from edgetl.compiler.stages.trained import TrainedModel, holdout_selection, say_choice, say_holdout_choice
from edgetl.models import ModelConfig


def new_student(config: CompileConfig, size: int, num_classes: int, strategy):
    from edgetl.models import create_model

    with strategy.scope():
        return create_model(
            config.student,
            weights=config.weights_arg(config.student_weights),
            num_classes=num_classes,
            dropout=config.dropout,
            input_size=size,
        )


def selection_note(student_config: ModelConfig | None, selection: str, val_images: int) -> str | None:
    """A line for a channel-pruned student under held-out selection, else None.

    Its probe is damaged by the cut, so distillation gains more than for a whole student, but it
    replaces the probe only when the gain shows beyond noise. Measured on flowers12 (slim75 at
    160 px): on 108 val images +3.7 points was within noise and the probe (91.2% test) was
    deployed; out of fold on 720 images +5.3 points was not, and the file scored 96.7%."""
    if student_config is None or not student_config.batch_norm_from_data or selection == "cv":
        return None
    return (f"{student_config.name} is channel-pruned: its distillation replaces its probe only when the gain shows on the "
            f"{val_images} val images; --selection cv judges it on every training image (slower; on flowers12 it deployed "
            "the distilled model where the val split kept the probe)")


def student_views(config: CompileConfig, teacher: TrainedModel | None, size: int, images: ImageCache):
    """Training pixels at the larger input size (one view, resized for each model), plus unlabelled."""
    view_size = max(size, teacher.input_size) if teacher is not None else size
    x, y = images.get("train", view_size)
    if teacher is not None and images.samples["unlabeled"]:
        xu, yu = images.get("unlabeled", view_size)
        x, y = x.concat(xu), np.concatenate([y, yu])
    return x, y


def _student_kwargs(config: CompileConfig, model_config: ModelConfig) -> dict:
    return dict(
        unfreeze_from=model_config.unfreeze_from,
        epochs=config.distill_epochs,
        learning_rate=config.distill_learning_rate,
        batch_size=config.batch_size,
        patience=max(config.patience, model_config.distill_patience or 0),
        temperature=config.temperature,
        seed=config.seed,
    )


def train_student_head(config, model_config, size, images: ImageCache, num_classes, strategy) -> TrainedModel:
    """The student headed by its linear probe (cached features): where distillation and the
    baseline both start from."""
    return probe_headed_student(config, model_config, size, images, num_classes, strategy)[0]


def probe_headed_student(config, model_config, size, images: ImageCache, num_classes, strategy, label: str = "student"):
    """(the student at `size` px headed by its linear probe, the probe with its out-of-fold scores)."""
    from edgetl.compiler.training.finetune import extract_features, train_head

    student = new_student(config, size, num_classes, strategy)
    x, y = images.get("train", size)
    if model_config.batch_norm_from_data:
        _batch_norm_from(student, x, config, label)
    cross_validated = not images.held_out["val"]  # no val split under cross-validation
    val = (x[:0], y[:0]) if cross_validated else images.get("val", size)
    features = extract_features(student, x, config.batch_size, f"{label}: features (train)")
    head, probe = train_head(student, config, (x, y), val, strategy, label=label, features=features)
    trained = TrainedModel("student", config.student, model_config, student, size, {"head": dataclasses.asdict(head)})
    trained.features = features if cross_validated else None  # only the CV stages start from them again
    return trained, probe


def _batch_norm_from(student, x, config, label: str) -> None:
    """Re-estimate a channel-pruned student's batch-norm statistics on the training images
    (plain AdaBN: each layer's moving mean and variance become its input's on them)."""
    from edgetl.compiler.progress import console
    from edgetl.compiler.training.adapt import adapt_batch_norm

    adapted, result = adapt_batch_norm(student, x, batch_size=config.batch_size, seed=config.seed)
    student.set_weights(adapted.get_weights())
    console.print(f"  {label}: batch-norm statistics of the channel-pruned backbone re-estimated on {result.images} training images")


def _from_head(head: TrainedModel, config, num_classes, strategy):
    """A fresh student with the head stage's weights (the cached head model stays untouched)."""
    from edgetl.models import create_model

    with strategy.scope():
        model = create_model(config.student, weights=None, num_classes=num_classes, dropout=config.dropout, input_size=head.input_size)
    model.set_weights(head.model.get_weights())
    return model


def distil(config, model_config, head: TrainedModel, teacher: TrainedModel, images: ImageCache, num_classes, strategy, selection="holdout"):
    return _train_from_head(config, model_config, head, teacher, images, num_classes, strategy, selection)


def train_baseline(config, model_config, head: TrainedModel, images: ImageCache, num_classes, strategy, selection="holdout"):
    return _train_from_head(config, model_config, head, None, images, num_classes, strategy, selection)


def _train_from_head(config, model_config, head: TrainedModel, teacher: TrainedModel | None, images: ImageCache, num_classes, strategy, selection):
    """Distillation (teacher given) or the labels-only baseline (teacher None), from the probe head."""
    from edgetl.compiler.training.distill import train_student

    role, key = ("student", "distillation") if teacher is not None else ("baseline", "labels_only")
    description = "student: distillation" if teacher is not None else "baseline: labels only"
    student = _from_head(head, config, num_classes, strategy)
    if selection == "cv":
        record = _train_from_head_cv(config, model_config, head, student, teacher, images, num_classes, strategy, description)
        training = {**head.training, key: record}
        return TrainedModel(role, config.student, model_config, student, head.input_size, training)
    result = train_student(
        student,
        teacher.model if teacher is not None else None,
        train_views=student_views(config, teacher, head.input_size, images),
        val=images.get("val", head.input_size),
        alpha=config.alpha if teacher is not None else 0.0,
        label=description,
        strategy=strategy,
        **_student_kwargs(config, model_config),
    )
    record = result.to_json()
    record["selection"] = holdout_selection(head.training["head"]["val_accuracy"], record["stage"], images.samples["val"])
    say_holdout_choice(role, record["selection"])
    training = {**head.training, key: record}
    return TrainedModel(role, config.student, model_config, student, head.input_size, training)


def _train_from_head_cv(config, model_config, head: TrainedModel, student, teacher: TrainedModel | None, images: ImageCache, num_classes, strategy, description):
    """Cross-validated distillation curve from the probe head, then the refit on all images."""
    import time

    from edgetl._compat import keras
    from edgetl.compiler.training.cv_training import distill_cv, fit_fixed
    from edgetl.compiler.training.distill import Distiller, distillation_dataset, logits_model
    from edgetl.compiler.training.finetune import extract_features, set_trainable_top
    from edgetl.compiler.training.crossval import stratified_folds
    start = time.perf_counter()
    size = head.input_size
    x, y = images.get("train", size)
    if head.features is None:  # the head came from the stage cache: its features were not kept
        head.features = extract_features(student, x, config.batch_size, f"{description}: features")
    features = head.features
    view_size = max(size, teacher.input_size) if teacher is not None else size
    x_views, _ = images.get("train", view_size)
    unlabeled = images.get("unlabeled", view_size)[0] if (teacher is not None and images.samples["unlabeled"]) else None
    fold_teachers = _fold_teachers(teacher) if teacher is not None else None
    splits = stratified_folds(y, config.folds, config.seed)
    # The labels-only baseline has one recipe: no teacher, so no temperature or share to choose.
    recipes = config.distill_recipes(cross_validated=True) if teacher is not None else {"labels only": (config.temperature, 0.0)}
    choice = distill_cv(
        student, teacher.model if teacher is not None else None,
        unfreeze_from=model_config.unfreeze_from, fold_teachers=fold_teachers, splits=splits, x_student=x, x_views=x_views, y=y, unlabeled_views=unlabeled,
        features=features, num_classes=num_classes, epochs=config.distill_epochs,
        learning_rate=config.distill_learning_rate, batch_size=config.batch_size, settings=recipes,
        seed=config.seed, label=f"{description}: cross-validation", strategy=strategy,
    )
    say_choice(description.split(":")[0], choice)
    temperature, alpha = list(recipes.values())[choice.recipe_index]
    if choice.epochs:
        keras.utils.set_random_seed(config.seed)
        distiller = Distiller(logits_model(student), logits_model(teacher.model) if teacher is not None else None, temperature, alpha)
        set_trainable_top(student, model_config.unfreeze_from)
        with strategy.scope():
            distiller.compile(optimizer=keras.optimizers.Adam(config.distill_learning_rate))
        xv, yv = student_views(config, teacher, size, images)
        fit_fixed(distiller, distillation_dataset(xv, yv, config.batch_size, config.seed), choice.epochs,
                  f"{description}: refit on all {len(y)} images")
    return {"selection": choice.to_json(), "temperature": temperature, "alpha": alpha,
            "labelled_images": int(len(y)), "unlabelled_images": 0 if unlabeled is None else int(len(unlabeled)),
            "seconds": time.perf_counter() - start}


def _fold_teachers(teacher: TrainedModel) -> list:
    """The teacher's fold models (its stage's record and extras) for the student's folds."""
    from edgetl.compiler.training.cv_training import FoldTeacher

    weights = (teacher.extras or {}).get("fold_weights")
    folds = teacher.training.get("fold_teachers")
    if weights is None or folds is None or len(weights) != len(folds):
        raise RuntimeError("the teacher's fold models are missing: its stage must run (or be cached) in cross-validation mode")
    return [FoldTeacher(fold["recipe"], fold["epochs"], fold["unfreeze_from"], w) for fold, w in zip(folds, weights)]
