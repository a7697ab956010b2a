"""What a training stage hands on: the model with the record the report needs
(`TrainedModel`), its round trip through the stage cache (`cached`), the Keras reference file
(`save_keras`), and how a stage records and says what its selection chose (held-out split or
cross-validation)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from edgetl.compiler.cache import StageCache
from edgetl.compiler.evaluation.evaluate import classification_metrics
from edgetl.compiler.progress import console
from edgetl.compiler.training.crossval import kept_because
from edgetl.models import ModelConfig, get_config


@dataclasses.dataclass
class TrainedModel:
    """A model that came out of a training stage, with what the report needs about it."""

    role: str  # "teacher", "student", "baseline", or "source" (--model: trained elsewhere)
    name: str
    config: ModelConfig
    model: object  # tf_keras.Model
    input_size: int
    training: dict
    test_probs: np.ndarray | None = None
    cached: bool = False  # reused from the stage cache rather than trained in this run
    # Arrays a later stage needs besides the model (the teacher's fold models under
    # cross-validation), stored with it in the stage cache.
    extras: dict | None = None
    # The backbone's pooled features of the training images, in memory only (not in the stage
    # cache). Under cross-validation distillation and the baseline both start from the student
    # head's backbone, unchanged, so they reuse these instead of each running it over every image.
    features: np.ndarray | None = None

    @property
    def head_refit(self) -> dict | None:
        """The record of the refit of its kept probe on train + val (refit_kept_probe), if any."""
        return (self.training.get("head") or {}).get("refit")

    @property
    def selection(self) -> dict | None:
        """How this model's recipe was chosen: the probe or training, by CV or on val."""
        stage = {"teacher": self.training, "student": self.training.get("distillation"), "baseline": self.training.get("labels_only")}.get(self.role)
        return (stage or {}).get("selection")

    def summary(self, y_test, classes, test_held_out: bool = True, y_train=None) -> dict:
        from edgetl.models import count_macs

        summary = {
            "model": self.name,
            "input_size": self.input_size,
            "params": int(self.model.count_params()),
            "macs": count_macs(self.model),
            "preprocessing": self.config.preprocessing + " (inside the exported graphs)",
            "training": self.training,
            "cached": self.cached,
            "test": classification_metrics(y_test, self.test_probs, classes) if test_held_out else None,
        }
        selection = self.selection
        if selection and selection.get("oof_pred") is not None and y_train is not None:
            # Cross-validated estimate: every labelled image scored by a fold model that did not train on it.
            oof = np.eye(len(classes))[np.asarray(selection["oof_pred"], np.int64)]
            cv = classification_metrics(y_train, oof, classes)
            summary["cv"] = {**cv, "n": cv["images"], "folds": int(selection["method"].split("-")[0]),
                             "chose": "the linear probe" if selection["probe_kept"] else f"{selection['chosen_epochs']} epochs of training"
                             + (f" ({selection['recipe']})" if selection.get("recipe") else "")}
        return summary


def cached(cache: StageCache, stage: str, key: str, train) -> TrainedModel:
    """Train, or reuse the stage's cached result when its inputs are unchanged."""
    hit = cache.load(stage, key)
    if hit is not None:
        model, record, arrays = hit
        console.print(f"    reusing cached {stage} ({key}) from {cache.root}")
        return TrainedModel(
            record["role"], record["name"], get_config(record["name"]), model, record["input_size"], record["training"],
            cached=True, extras=_extras_from_arrays(arrays),
        )
    trained = train()
    record = {"role": trained.role, "name": trained.name, "input_size": trained.input_size, "training": trained.training}
    cache.store(stage, key, trained.model, record, _extras_to_arrays(trained.extras))
    return trained


def _extras_to_arrays(extras: dict | None) -> dict:
    """Fold models as flat named arrays (w<fold>_<index>), for the stage cache."""
    if not extras or not extras.get("fold_weights"):
        return {}
    return {f"w{f}_{i}": w for f, weights in enumerate(extras["fold_weights"]) for i, w in enumerate(weights)}


def _extras_from_arrays(arrays: dict) -> dict | None:
    if not arrays:
        return None
    folds: dict[int, dict[int, np.ndarray]] = {}
    for name, value in arrays.items():
        fold, index = name[1:].split("_")
        folds.setdefault(int(fold), {})[int(index)] = value
    return {"fold_weights": [[ws[i] for i in sorted(ws)] for _, ws in sorted(folds.items())]}


def save_keras(model, path: Path) -> None:
    from edgetl._compat import keras
    from edgetl.atomic import atomic_path

    with atomic_path(path) as tmp:
        # Saved through an uncompiled twin (same layers) so no optimizer state is written:
        # the file is a reference model, not a training checkpoint.
        keras.Model(model.inputs, model.outputs, name=model.name).save(tmp)


def holdout_selection(probe_val: float | None, stage: dict, val_samples) -> dict:
    """What the val split chose between the probe and the trained model, in the CV record's terms."""
    from edgetl.compiler.evaluation.stats import Accuracy

    n = len(val_samples)
    kept = stage["best_epoch"] == 0
    chosen = probe_val if kept else stage["best_val_accuracy"]
    return {
        "method": f"held-out validation split ({n} images)",
        "chosen_epochs": stage["best_epoch"],
        "probe_kept": kept,
        "estimate": Accuracy(round((chosen or 0.0) * n), n).to_json(),
        "probe": Accuracy(round((probe_val or 0.0) * n), n).to_json(),
        "versus_probe": stage.get("versus_start"),
    }


def say_holdout_choice(role: str, selection: dict) -> None:
    versus = selection.get("versus_probe")
    if versus and selection["probe_kept"]:
        # The verdict says why in its own words ("within noise of each other", or the probe is better).
        console.print(f"    {role}: the linear probe is kept on val: {versus['verdict']}")
    elif versus:
        console.print(f"    {role}: {selection['chosen_epochs']} epochs chosen on val; {versus['verdict']}")


def say_choice(role: str, choice) -> None:
    from edgetl.compiler.evaluation.stats import widest_half_interval

    n = choice.estimate.n
    for recipe, accuracies in (choice.recipes or {None: choice.accuracy_by_epoch}).items():
        curve = " ".join(f"{a:.1%}" for a in accuracies)
        # One interval per figure would drown the curve; the widest says how far any of them can be trusted.
        widest = widest_half_interval(accuracies, n)
        console.print(f"    {role}{f' ({recipe})' if recipe else ''}: out-of-fold accuracy by epoch (0 = probe; n={n}, "
                      f"each within about ±{100 * widest:.1f} points at 95%): {curve}")
    if choice.probe_kept:
        if choice.versus_probe["best_epochs"] == 0:
            console.print(f"    {role}: the linear probe is kept ({choice.estimate.describe()}): no number of epochs beat it out of fold")
        else:
            console.print(f"    {role}: the linear probe is kept ({choice.estimate.describe()}): {choice.versus_probe['verdict']}: "
                          f"{kept_because(choice.versus_probe)}")
    else:
        recipe = f" ({choice.recipe})" if choice.recipe else ""
        console.print(f"    {role}: {choice.epochs} epochs chosen{recipe}, {choice.estimate.describe()}; {choice.versus_probe['verdict']}")



def refit_kept_probe(trained: TrainedModel, images, config, like: TrainedModel | None = None) -> TrainedModel:
    """Under held-out selection, when the val split kept `trained`'s linear probe: refit the probe
    on train + val, its C and feature columns chosen again by 5-fold cross-validation on them.

    Val has then done its one job (probe or training); leaving its images out of the deployed
    model's fit would throw away 15% of the labelled data for nothing. Cheap: one forward pass
    of the frozen backbone (the probe was kept, so the backbone is the one the probe read) and
    a probe fit on cached features. Trained models (fine-tuned or distilled) are not refit: that
    would be a second training. Under cross-validation the deployed model is already refit on
    every labelled image, and under --adapt nothing is refit (CompileConfig.refits_kept_probe).
    The test split is untouched. The quantization gate's val images were
    then seen by the head: the optimize stage fine-tunes its candidates (QAT, pruning) on them
    too, so the gate checks fidelity to the float model there, as under cross-validation.

    like: a model already refit (the student, for the baseline). Where every weight but the
    head's is the same (both kept the probe of one head stage), its refit head is the answer
    (the same features, the same fit), so it is copied instead of computed twice.
    """
    selection = trained.selection
    if not config.refits_kept_probe or not images.held_out["val"] or not selection or not selection.get("probe_kept"):
        return trained
    import time

    from edgetl.compiler.evaluation.stats import ci95, describe_accuracy
    from edgetl.compiler.training.finetune import extract_features
    from edgetl.compiler.training.probe import features_name, fit_probe, set_head
    from edgetl.models import LOGITS_LAYER, final_pool_width

    start = time.perf_counter()
    if like is not None and like.head_refit and _same_backbone(trained.model, like.model):
        trained.model.get_layer(LOGITS_LAYER).set_weights(like.model.get_layer(LOGITS_LAYER).get_weights())
        refit = {**like.head_refit, "copied_from": like.role, "seconds": time.perf_counter() - start}
        trained.training = {**trained.training, "head": {**trained.training["head"], "refit": refit}}
        console.print(f"    {trained.role}: the kept linear probe refit on train + val: the {like.role}'s refit head "
                      "(the same backbone weights, so the same fit)")
        return trained
    size = trained.input_size
    (x, y), (xv, yv) = images.get("train", size), images.get("val", size)
    x_all, y_all = x.concat(xv), np.concatenate([y, yv])
    features = extract_features(trained.model, x_all, config.batch_size, f"{trained.role}: features (train + val)")
    num_classes = trained.model.get_layer(LOGITS_LAYER).units
    probe = fit_probe(features, y_all, num_classes, seed=config.seed, first_columns=final_pool_width(trained.model))
    set_head(trained.model, probe)
    accuracy = float(probe.cv_accuracy[probe.C])
    refit = {"images": len(y_all), "C": probe.C, "columns": probe.columns, "folds": probe.folds,
             "cv_accuracy": accuracy, "cv_ci95": list(ci95(accuracy, len(y_all))), "seconds": time.perf_counter() - start}
    # A new head record: the student's and the baseline's records share the head stage's dict.
    trained.training = {**trained.training, "head": {**trained.training["head"], "refit": refit}}
    read = f" on the {features_name(probe.columns)}'s features" if final_pool_width(trained.model) is not None else ""
    console.print(f"    {trained.role}: the kept linear probe refit on train + val ({refit['images']} images): C={probe.C:g}{read}, "
                  f"{probe.folds}-fold CV accuracy {describe_accuracy(refit['cv_accuracy'], refit['images'])}")
    return trained


def _same_backbone(a, b) -> bool:
    """Whether two models of one architecture hold the same weights everywhere but the head."""
    from edgetl.models import LOGITS_LAYER

    if len(a.layers) != len(b.layers):
        return False
    for la, lb in zip(a.layers, b.layers):  # by position: auto-named layers differ between two builds
        if (la.name == LOGITS_LAYER) != (lb.name == LOGITS_LAYER):
            return False
        if la.name == LOGITS_LAYER:
            continue
        wa, wb = la.get_weights(), lb.get_weights()
        if len(wa) != len(wb) or not all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(wa, wb)):
            return False
    return True
