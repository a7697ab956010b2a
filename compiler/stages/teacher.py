"""The teacher stage: the ImageNet model headed by its linear probe, then fine-tuned, the better
of the two kept by the selection rule (a held-out split, or k-fold cross-validation on small
data followed by one refit on all labelled images); optionally in bf16 mixed precision."""

from __future__ import annotations

import dataclasses

from edgetl.compiler.data.image_store import ImageCache
from edgetl.compiler.progress import console
from edgetl.compiler.spec.config import CompileConfig
from edgetl.compiler.stages.trained import TrainedModel, holdout_selection, say_choice, say_holdout_choice
from edgetl.models import ModelConfig


def train_teacher(config: CompileConfig, model_config: ModelConfig, images: ImageCache, num_classes: int, strategy, selection: str = "holdout"):
    from edgetl.models import create_model

    size = model_config.input_size
    with strategy.scope():
        model = create_model(
            config.teacher, weights=config.weights_arg(config.teacher_weights), num_classes=num_classes, dropout=config.dropout
        )
    if selection == "cv":
        return _train_teacher_cv(config, model_config, model, images, num_classes, strategy)
    from edgetl.compiler.training.finetune import finetune

    training = finetune(model, model_config.unfreeze_from, config, images.get("train", size), images.get("val", size), strategy)
    record = training.to_json()
    record["selection"] = holdout_selection(record["head"]["val_accuracy"], record["top"], images.samples["val"])
    say_holdout_choice("teacher", record["selection"])
    return TrainedModel("teacher", config.teacher, model_config, model, size, record)


def finetune_recipes(config: CompileConfig, model_config: ModelConfig, cross_validated: bool) -> dict[str, tuple[float, str]]:
    """The fine-tuning recipes tried, as (learning rate, first layer unfrozen)."""
    layers = {"top": model_config.unfreeze_from, "deeper": model_config.deeper_unfreeze_from}
    recipes = config.finetune_recipes(cross_validated, deeper=model_config.deeper_unfreeze_from is not None)
    return {name: (recipe.learning_rate, layers[recipe.depth]) for name, recipe in recipes.items()}


def in_training_precision(config: CompileConfig, model_config: ModelConfig, num_classes: int, train) -> TrainedModel:
    """Run `train` (a teacher stage) in bf16 mixed precision when --mixed-precision decides so
    (compiler/spec/precision.py); what comes back is always a float32 model."""
    from edgetl.compiler.spec.precision import MIXED_POLICY, float32_copy, training_policy, use_bf16

    bf16, why = use_bf16(config.mixed_precision, model_config)
    if bf16:
        console.print(f"    training in bf16 mixed precision: {why}")
    with training_policy(bf16):
        trained = train()
    if bf16:
        trained.model = float32_copy(trained.model, trained.name, num_classes, trained.input_size, config.dropout)
    trained.training = {**trained.training, "precision": {"policy": MIXED_POLICY if bf16 else "float32", "why": why}}
    return trained


def _train_teacher_cv(config: CompileConfig, model_config: ModelConfig, model, images: ImageCache, num_classes: int, strategy):
    """Teacher on small data: probe, cross-validated fine-tuning curve, refit on all images."""
    import time

    from edgetl._compat import keras
    from edgetl.compiler.training.cv_training import finetune_cv, fit_fixed
    from edgetl.compiler.training.finetune import extract_features, set_trainable_top, train_head, training_dataset
    from edgetl.compiler.training.probe import set_head

    start = time.perf_counter()
    size = model_config.input_size
    x, y = images.get("train", size)
    pretrained = model.get_weights()
    features = extract_features(model, x, config.batch_size, "teacher: features")
    head, probe = train_head(model, config, (x, y), (x[:0], y[:0]), strategy, label="teacher", features=features)
    # The backbone as pretrained plus each fold's probe is where each fold starts.
    model.set_weights(pretrained)
    recipes = finetune_recipes(config, model_config, cross_validated=True)
    choice, fold_teachers, _ = finetune_cv(
        model, x=x, y=y, features=features,
        num_classes=num_classes, epochs=config.finetune_epochs, recipes=recipes,
        batch_size=config.batch_size, folds=config.folds, seed=config.seed, label="teacher: cross-validation", strategy=strategy,
    )
    set_head(model, probe)
    say_choice("teacher", choice)
    learning_rate, unfreeze_from = list(recipes.values())[choice.recipe_index]
    if choice.epochs:
        set_trainable_top(model, unfreeze_from)
        with strategy.scope():
            model.compile(keras.optimizers.Adam(learning_rate), keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
        keras.utils.set_random_seed(config.seed)
        fit_fixed(model, training_dataset(x, y, config.batch_size, config.seed), choice.epochs, f"teacher: refit on all {len(y)} images")
    record = {
        "head": dataclasses.asdict(head),
        "selection": choice.to_json(),
        "learning_rate": learning_rate if choice.epochs else None,
        # The first layer the deployed teacher was trained from (the first recipe's when the
        # probe is kept).
        "unfreeze_from": unfreeze_from,
        # Each fold's teacher for the student's folds, chosen without that fold's images; its
        # weights (trainable from "unfreeze_from") travel as the stage's extras.
        "fold_teachers": [fold.to_json() for fold in fold_teachers],
        "seconds": time.perf_counter() - start,
    }
    trained = TrainedModel("teacher", config.teacher, model_config, model, size, record)
    trained.extras = {"fold_weights": [fold.weights for fold in fold_teachers]}
    return trained

