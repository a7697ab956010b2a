"""The resolved configuration of one compile: what the CLI builds and the Python API takes."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import NamedTuple

from edgetl.compiler.spec.modes import (
    Adapt, ChannelOrder, IoDtype, MixedPrecision, Mode, ModelOutput, Preprocess, Quantize, Selection, Strategy,
)

# The recipes cross-validation also tries (CompileConfig.search). Each grid explores only the
# direction the probe does not already cover: a smaller learning rate, or a smaller teacher
# share, moves the trained model towards its start (the probe, or the labels-only baseline),
# which is a candidate anyway.
# - Fine-tuning 3x faster: the default (1e-4, batch norm frozen) is set for the held-out case,
#   where one run must be safe; on a small set its few epochs may not move the features far
#   enough to beat the probe beyond noise.
# - Fine-tuning one stage deeper (ModelConfig.deeper_unfreeze_from), at the given rate: how
#   deep to fine-tune. A shallower top is no new direction: it lies between the probe and
#   the default top, and fewer epochs already move the model back towards the probe.
# - Distillation as function matching (Beyer et al., "Knowledge distillation: A good teacher
#   is patient and consistent", CVPR 2022): the teacher's whole distribution at T = 1 on
#   consistent augmented views (as edgetl's distillation step makes them) and no label term.
#   The labels stay in the teacher, which was trained on them.
SEARCH_LEARNING_RATE_FACTOR = 3.0
SEARCH_DISTILLATION = (1.0, 1.0)  # (temperature, alpha)


class FinetuneRecipe(NamedTuple):
    learning_rate: float
    depth: str  # "top" (ModelConfig.unfreeze_from) or "deeper" (ModelConfig.deeper_unfreeze_from)


@dataclasses.dataclass(frozen=True)
class CompileConfig:
    """Every setting of one compile. Building one checks it (validate()) and holds each choice
    as its Mode: the command line, a recipe and the Python API all build a CompileConfig, so every
    setting passes the same checks whatever its source, before any work. The defaults below are
    the only ones: the CLI reads its own from these fields."""

    data: Path
    out: Path
    teacher: str = "resnet50"
    # "imagenet" (the registry's pretrained weights), a path to a weights file, or "none" for
    # random initialisation (explicit only: edgetl never falls back to random weights).
    teacher_weights: str = "imagenet"
    # Stage 1: the linear probe on cached features of the frozen backbone (compiler/training/probe.py).
    # Stage 2: the top of the backbone unfrozen, low learning rate, batch-norm statistics frozen.
    finetune_epochs: int = 8
    finetune_learning_rate: float = 1e-4
    patience: int = 3
    # Distillation: the student that is deployed ("none": deploy the teacher itself).
    student: str = "efficientnet_lite0"
    # None: the target's, else the student's own input size (resolved()); "auto": chosen among
    # the student's own size and smaller ones by measuring each (compiler/stages/resolution.py).
    student_size: int | str | None = None
    student_weights: str = "imagenet"
    distill_epochs: int = 12
    distill_learning_rate: float = 3e-4
    # Chosen on flowers12's validation split (benchmarks/distill_sweep.py, lite2 -> lite0, same
    # budget): (alpha, T) = (0.5, 2) and (0.9, 4) reached 100% val, (0.9, 2) and (0.5, 4) 99.07%,
    # the labels-only baseline 96.3%; the tie went to the milder (0.5, 2).
    temperature: float = 2.0
    alpha: float = 0.5  # share of the teacher's soft targets in the loss (0: labels only)
    unlabeled: Path | None = None  # images without labels: the soft term, and adaptation (--adapt)
    # Adaptation of the deployed model to the --unlabeled images (compiler/training/adapt.py): none, bn
    # (AdaBN + int8 calibration on them), camera (a simulated camera fitted to them, training
    # through it), shot (AdaBN + SHOT self-training), or auto: with
    # --target-val the best there, else the measured default (ADAPT_DEFAULT). Ignored without
    # --unlabeled.
    adapt: Adapt = Adapt.AUTO
    target_val: Path | None = None  # a small labelled set from the target camera: chooses and reports
    adapt_epochs: int = 3  # self-training epochs (shot)
    robustness: bool = True  # score the deployed files on the corruption suite (compiler/evaluation/robustness.py)
    baseline: bool = True  # also train the student without the teacher, for the ablation
    # Quantization and pruning (compiler/compression/optimize.py).
    # None = the target's choice, else the default (see resolved()).
    quantize: Quantize | None = None  # auto (within the gate: the smallest file among those within 15% of the fastest p50), fp32, fp16, dynamic, int8
    io_dtype: IoDtype | None = None  # input/output type of full-integer files: uint8, int8 or float32
    # Defaults measured on flowers12 (benchmarks/compression_study.py): int8 accuracy is flat from
    # 16 to 256 calibration images and worse with all 612 (min/max catches outliers); QAT from
    # calibrated ranges keeps its start at 1e-5 and loses accuracy at 1e-4; 50% pruning needs
    # about 6 epochs with the sparsity ramp over the first half.
    calibration_size: int = 128  # class-balanced training images for int8 ranges
    qat: bool = False  # also build a quantization-aware-trained int8 file
    qat_epochs: int = 2
    qat_learning_rate: float = 1e-5
    prune: float = 0.0  # target sparsity of magnitude pruning (0: none)
    prune_epochs: int = 6
    prune_learning_rate: float = 1e-4
    # Sparsity-preserving weight clustering of the pruned model, then PCQAT (0: none). Measured
    # on flowers12 (compression_study, 50%-pruned Lite0, 16 clusters): 2 epochs at 1e-5 left
    # the PCQAT file 2.5 points below float; 4 epochs at 1e-4 brought it to -0.8.
    cluster: int = 0  # shared values per kernel, e.g. 16
    cluster_epochs: int = 4
    cluster_learning_rate: float = 1e-4
    max_accuracy_drop: float = 1.0  # points of val accuracy a quantized file may lose vs fp32
    # --quantize auto: among the files within the accuracy gate, only those whose p50 measured
    # here is at most this many ms may be deployed (None: no budget); see compiler/compression/optimize.py.
    max_latency_ms: float | None = None
    # Teacher training in bf16 mixed precision (compiler/spec/precision.py): "auto" where the model
    # family gains from it (ModelConfig.bf16_training, measured with benchmarks/bf16_training.py)
    # and the machine computes bf16 natively; "bf16" always; "off" never. The trained teacher is
    # float32 again before anything is exported or checked.
    mixed_precision: MixedPrecision = MixedPrecision.AUTO
    target: str | None = None  # a device profile (compiler/spec/targets.py)
    threads: int | None = None  # latency measurement threads (default: the target's, else 4, capped by cores)
    batch_size: int = 32  # per replica: with R replicas the global batch is R x this (compiler/training/distribution.py)
    # Training devices and machines (compiler/training/distribution.py): auto, one, mirrored, multi-worker.
    strategy: Strategy = Strategy.AUTO
    dropout: float = 0.2
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    # Small data (compiler/training/crossval.py): below `cv_below` labelled training images, choices
    # (probe or fine-tuning, and for how many epochs) are made by `folds`-fold cross-validation
    # and nothing is carved for val or test; the deployed model is refit on all of them. The
    # count leaves out a test split that the held-out way would carve (no test/ given), so it is
    # the images training and choosing would have either way.
    # "holdout" or "cv" force one way. 600: a 15% val split of fewer than ~90 images moves by
    # more than a point per image, too coarse to pick epochs or the probe on its own.
    # 3 folds, not 5: each fold trains the model, so the cost is (folds - 1) trainings on the
    # whole set per recipe; 3 folds keep a compile of a few hundred images at about 2-3x a
    # held-out one with the flags' recipe alone (--no-search), about twice that with the search.
    # (The probe's C, cheap on cached features, always uses 5 folds.)
    selection: Selection = Selection.AUTO
    cv_below: int = 600
    folds: int = 3
    # Under cross-validation, also choose the recipe: fine-tuning at the given learning rate, at
    # SEARCH_LEARNING_RATE_FACTOR times it and one stage deeper; distillation at the given
    # (temperature, alpha) and at SEARCH_DISTILLATION (finetune_recipes, distill_recipes below).
    # Each recipe costs one more training per fold.
    search: bool = True
    seed: int = 0
    overwrite: bool = False
    # Stage cache (compiler/cache.py): None = the default location; use_cache False = always retrain.
    cache_dir: Path | None = None
    use_cache: bool = True
    # Bring your own model (compiler/training/source_model.py): a trained Keras classifier (.keras, .h5,
    # SavedModel folder) compiled without training; DATA calibrates, gates and scores it. How it
    # takes its input: a preset (raw, tf, torch, caffe) or mean/std (one number or three) on
    # pixels times scale, in channel_order; an edgetl .keras carries its own. labels: a file of
    # the model's class names in output order (default: DATA's folders, sorted). model_output:
    # auto (a softmax in the model, else measured on DATA), probabilities or logits.
    model: Path | None = None
    input_size: int | None = None
    preprocess: Preprocess | None = None
    mean: object = None
    std: object = None
    scale: object = None
    channel_order: ChannelOrder | None = None
    labels: Path | None = None
    model_output: ModelOutput = ModelOutput.AUTO

    def __post_init__(self):
        # Only path-like values become Paths: anything else (a number or a list from a recipe)
        # stays as given so that validate() can name it in one line.
        for name in ("data", "out", "unlabeled", "target_val", "cache_dir", "model", "labels"):
            value = getattr(self, name)
            if isinstance(value, (str, os.PathLike)):
                object.__setattr__(self, name, Path(value))
        if isinstance(self.student_size, str) and self.student_size.strip().isdigit():  # "160" from a text field
            object.__setattr__(self, "student_size", int(self.student_size))
        self.validate()
        # Checked, so each choice is one of its Mode's values: hold it as that member.
        for name, (mode, _) in _MODE_FIELDS.items():
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, mode(value))

    def resolved(self) -> "CompileConfig":
        """Every setting decided: the target's profile fills what the user left open, then the
        defaults. Nothing is left for run time to decide, so the cache keys and recipe.yaml see
        the values actually used (`student_size: null` and 224 are the same lite0 student)."""
        from edgetl.compiler.spec.targets import get_target
        from edgetl.models import get_config
        from edgetl.runtime.measure import default_threads

        target = get_target(self.target) if self.target else None
        if self.model is not None:  # nothing is trained: no student, the given model is deployed
            self = dataclasses.replace(self, student="none")
        student_size = None  # no student (--student none): no student size
        if self.distills:
            # "auto" stays "auto": the student stage measures the sizes and the report gives its choice.
            student_size = self.student_size or (target.student_size if target else get_config(self.student).input_size)
        return dataclasses.replace(
            self,
            quantize=self.quantize or (target.quantize if target else "auto"),
            io_dtype=self.io_dtype or (target.io_dtype if target else "uint8"),
            student_size=student_size,
            threads=self.threads or default_threads(target.threads if target else 4),
        )

    def validate(self) -> None:
        """Check every setting's type and range before any work; one line names the first bad one.

        Settings come from the command line (typer checks some), a recipe (YAML: anything) or
        the Python API (anything), so every rule is checked here, whatever the source.
        """
        from edgetl.errors import SettingError

        for name, rule in _RULES.items():
            problem = rule(getattr(self, name))
            if problem:
                raise SettingError(_message(name, getattr(self, name), problem))
        if self.val_fraction + self.test_fraction >= 0.9:
            raise SettingError(
                f"val_fraction + test_fraction (--val-fraction, --test-fraction) = {self.val_fraction} + {self.test_fraction}: "
                "must leave at least 10% of the images for training"
            )
        if self.adapt not in ("auto", "none") and self.unlabeled is None:
            raise SettingError(f"--adapt {self.adapt} adapts to images from the device: give them with --unlabeled DIR")
        if self.target_val is not None and self.unlabeled is None:
            raise SettingError("--target-val scores adaptation to the device's images: give those too with --unlabeled DIR")
        self._validate_source_model()
        if self.student_size == AUTO_SIZE and self.strategy == "multi-worker":
            # Each worker would time the sizes on its own machine and could choose another one.
            raise SettingError("--student-size auto times each size on this machine, which workers could not agree on: "
                               "with --strategy multi-worker give the size, e.g. --student-size 160")
        if self.cluster and self.prune == 0:
            raise SettingError("--cluster shares the weights of a pruned model: give --prune too, e.g. --prune 0.5 --cluster 16")
        self._validate_names()

    def _validate_names(self) -> None:
        """Registry names, target and weights: known, and consistent with each other."""
        from edgetl.compiler.spec.targets import TARGETS
        from edgetl.errors import SettingError
        from edgetl.models import get_config

        if self.target is not None and self.target not in TARGETS:
            raise SettingError(_message("target", self.target, f"is not a target; one of {', '.join(TARGETS)} (see `edgetl targets`)"))
        get_config(self.teacher)  # unknown names: ModelNotFoundError, one line with suggestions
        if self.distills:
            get_config(self.student)
        for name in ("teacher_weights", "student_weights"):
            value = getattr(self, name)
            if value.lower() not in ("imagenet", "none") and not Path(value).expanduser().is_file():
                raise SettingError(_message(name, value, "must be 'imagenet', 'none' or an existing weights file; there is no file at that path"))
        target = TARGETS.get(self.target) if self.target else None
        if target is not None and self.quantize is not None:
            # A precision the target's runtime cannot run as intended is refused now, rather
            # than built and then failed by the target check at the end of the compile.
            allowed = {"tflite-int8-only": ("int8",), "tflite-gpu": ("fp32", "fp16", "auto")}.get(target.ops)
            if allowed and self.quantize not in allowed:
                runs = "full-integer int8 files only" if allowed == ("int8",) else "float files only"
                raise SettingError(
                    _message("quantize", self.quantize, f"cannot deploy to --target {target.name}, which runs {runs}; "
                             f"use --quantize {' or '.join(allowed)}, or leave it unset (the target's choice: {target.quantize})")
                )
        if target is not None and target.ops == "tflite-int8-only" and self.io_dtype is not None and str(self.io_dtype) != target.io_dtype:
            # The same reason: the target check would fail the finished file on its input type.
            raise SettingError(
                _message("io_dtype", self.io_dtype, f"cannot deploy to --target {target.name}, whose model input must be "
                         f"{target.io_dtype}; use --io-dtype {target.io_dtype}, or leave it unset (the target's choice)")
            )

    def _validate_source_model(self) -> None:
        """--model and the options that say how it takes its input."""
        from edgetl.errors import SettingError

        source_only = ("input_size", "preprocess", "mean", "std", "scale", "channel_order", "labels")
        if self.model is None:
            given = [f"--{n.replace('_', '-')}" for n in source_only if getattr(self, n) is not None]
            if given:
                raise SettingError(f"{', '.join(given)} {'describes' if len(given) == 1 else 'describe'} a model you bring: give it with --model FILE (edgetl's own models carry their preprocessing)")
            return
        from edgetl.compiler.training.source_model import parse_scale, parse_triple

        if not Path(self.model).expanduser().exists():
            raise SettingError(_message("model", str(self.model), "must be a Keras model file (.keras, .h5) or SavedModel folder; there is nothing at that path"))
        if self.labels is not None and not Path(self.labels).expanduser().is_file():
            raise SettingError(_message("labels", str(self.labels), "must be a text file of class names, one per line; there is no file at that path"))
        if self.unlabeled is not None:
            raise SettingError("--unlabeled (distillation and adaptation) needs training; with --model nothing is trained: drop it")
        parse_triple(self.mean, "mean")
        parse_triple(self.std, "std")
        parse_scale(self.scale)

    def for_training(self, **changes) -> "CompileConfig":
        """A copy with values derived by edgetl, not given by the user, so not held to the user's
        ranges: with R replicas training uses R x --batch-size (which may pass 4096) and R x each
        learning rate (compiler/pipeline.py, _scaled_for)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"not CompileConfig settings: {', '.join(sorted(unknown))}")
        copy = object.__new__(type(self))
        copy.__dict__.update({**vars(self), **changes})  # frozen: no __setattr__, so no __post_init__ checks
        return copy

    def finetune_recipes(self, cross_validated: bool, deeper: bool = True) -> dict[str, FinetuneRecipe]:
        """The fine-tuning recipes tried (name: recipe); one unless searching under CV.

        deeper: whether the model has a deeper layer to fine-tune from (ModelConfig)."""
        recipes = [FinetuneRecipe(self.finetune_learning_rate, "top")]
        if self.search and cross_validated:
            recipes.append(FinetuneRecipe(self.finetune_learning_rate * SEARCH_LEARNING_RATE_FACTOR, "top"))
            if deeper:
                recipes.append(FinetuneRecipe(self.finetune_learning_rate, "deeper"))
        return {f"{r.depth}, learning rate {r.learning_rate:g}": r for r in recipes}

    def distill_recipes(self, cross_validated: bool) -> dict[str, tuple[float, float]]:
        """The distillation settings tried (name: (temperature, alpha)); one unless searching under CV."""
        settings = [(self.temperature, self.alpha)]
        if self.search and cross_validated and SEARCH_DISTILLATION not in settings:
            settings.append(SEARCH_DISTILLATION)
        return {f"temperature {t:g}, teacher's share {a:g}": (t, a) for t, a in settings}

    @property
    def distills(self) -> bool:
        return self.student.lower() != "none"

    def distils_into_itself(self) -> bool:
        """The student would be the teacher's own network at its own size, from the same ImageNet
        weights, with no --unlabeled images to add: distillation then trains the same model a
        second time, for the price of the student stages. Call on a resolved config."""
        from edgetl.models import get_config

        return (self.distills and self.model is None and self.unlabeled is None and self.student == self.teacher
                and self.student_size == get_config(self.teacher).input_size
                and self.student_weights.lower() == self.teacher_weights.lower() == "imagenet")

    @property
    def adapts(self) -> bool:
        """The deployed model is adapted to the --unlabeled images (the adapt stage runs)."""
        return self.unlabeled is not None and self.adapt != "none"

    @property
    def refits_kept_probe(self) -> bool:
        """Under held-out selection, a kept probe is refit on train + val
        (compiler/stages/trained.py's refit_kept_probe), unless the model is then adapted: the
        adaptation's clean-accuracy guard reads val, which must stay unseen by the head."""
        return not self.adapts

    @property
    def chooses_student_size(self) -> bool:
        """--student-size auto: the student's input size is measured and chosen at run time."""
        return self.distills and self.student_size == AUTO_SIZE

    @staticmethod
    def weights_arg(weights: str) -> str | None:
        """A weights option as create_model takes it ("none" -> random initialisation)."""
        return None if weights.lower() == "none" else weights

    def to_json(self) -> dict:
        """Plain values (a Mode as its string, paths as text): what recipe.yaml and report.json hold."""
        d = {name: value.value if isinstance(value, Mode) else value for name, value in dataclasses.asdict(self).items()}
        d["data"], d["out"] = str(self.data), str(self.out)
        d["unlabeled"] = str(self.unlabeled) if self.unlabeled else None
        d["target_val"] = str(self.target_val) if self.target_val else None
        d["cache_dir"] = str(self.cache_dir) if self.cache_dir else None
        d["model"] = str(self.model) if self.model else None
        d["labels"] = str(self.labels) if self.labels else None
        return d


# --------------------------------------------------------------------------------------------
# Validation rules: each returns None when the value is fine, else what is allowed.
# --------------------------------------------------------------------------------------------

# Input sizes above this cannot be trained here (one 1024 px float batch of 32 is 400 MB before
# any activation) and no edge runtime runs them; 10000 px would need ~1.2 GB per image.
MAX_INPUT_SIZE = 1024
AUTO_SIZE = "auto"  # --student-size auto: measured and chosen (compiler/stages/resolution.py)
MIN_INPUT_SIZE = 16  # the tiny test models run at 24 px; the CLI asks for at least 32


def _message(name: str, value, problem: str) -> str:
    """'--finetune-epochs 'two' must be ... (setting finetune_epochs)': the flag for command-line users,
    the setting's name for recipes and the Python API."""
    shown = repr(str(value)) if isinstance(value, str) else str(value)  # str(): a Mode as its plain value
    return f"--{name.replace('_', '-')} {shown} {problem} (setting {name})"


def _int(lo: int, hi: int, optional: bool = False):
    def rule(value):
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be a whole number from {lo} to {hi}" + (" (or left unset)" if optional else "")
        if not lo <= value <= hi:
            return f"must be from {lo} to {hi}" + (" (or left unset)" if optional else "")
        return None

    return rule


def _float(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False):
    def rule(value):
        low, high = ("(" if lo_open else "["), (")" if hi_open else "]")
        allowed = f"a number in {low}{lo:g}, {hi:g}{high}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"must be {allowed}"
        if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
            return f"must be {allowed}"
        return None

    return rule


def _bool(value):
    return None if isinstance(value, bool) else "must be true or false"


def _text(value):
    return None if isinstance(value, str) and value.strip() else "must be a non-empty name (text)"


def _choice(mode: type[Mode], optional: bool):
    allowed = mode.values()

    def rule(value):
        if (value is None and optional) or (isinstance(value, str) and value in allowed):
            return None
        return f"must be one of {', '.join(allowed)}" + (" (or left unset)" if optional else "")

    return rule


def _path(optional: bool):
    def rule(value):
        if value is None and optional:
            return None
        if isinstance(value, (str, os.PathLike)) and str(value).strip():
            return None
        return "must be a folder path" + (" (or left unset)" if optional else "")

    return rule


def _optional_text(value):
    return None if value is None else _text(value)


_RULES = {
    "data": _path(optional=False),
    "out": _path(optional=False),
    "teacher": _text,
    "teacher_weights": _text,
    "finetune_epochs": _int(0, 10_000),
    "finetune_learning_rate": _float(0.0, 10.0, lo_open=True),
    "patience": _int(0, 10_000),
    "student": _text,
    "student_size": lambda v: v != AUTO_SIZE and _int(MIN_INPUT_SIZE, MAX_INPUT_SIZE, optional=True)(v) and (
        f"must be a whole number of pixels from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}, 'auto', or unset (larger inputs do not fit "
        "a training batch in memory, and no edge runtime runs them)"
    ),
    "student_weights": _text,
    "distill_epochs": _int(0, 10_000),
    "distill_learning_rate": _float(0.0, 10.0, lo_open=True),
    "temperature": _float(1.0, 100.0),
    "alpha": _float(0.0, 1.0),
    "unlabeled": _path(optional=True),
    "baseline": _bool,
    "calibration_size": _int(1, 100_000),
    "qat": _bool,
    "qat_epochs": _int(1, 10_000),
    "qat_learning_rate": _float(0.0, 10.0, lo_open=True),
    "prune": _float(0.0, 1.0, hi_open=True),
    "prune_epochs": _int(1, 10_000),
    "prune_learning_rate": _float(0.0, 10.0, lo_open=True),
    "cluster": lambda v: _int(0, 256)(v) or ("must be 0 (none) or a number of shared values from 2 to 256, e.g. 16" if v == 1 else None),
    "cluster_epochs": _int(1, 10_000),
    "cluster_learning_rate": _float(0.0, 10.0, lo_open=True),
    "max_accuracy_drop": _float(0.0, 100.0),
    "max_latency_ms": lambda v: None if v is None else _float(0.0, 1e6, lo_open=True)(v),
    "target": _optional_text,
    "threads": _int(1, 1024, optional=True),
    "batch_size": _int(1, 4096),
    "dropout": _float(0.0, 1.0, hi_open=True),
    "val_fraction": _float(0.0, 0.5, lo_open=True),
    "test_fraction": _float(0.0, 0.5, lo_open=True),
    "seed": _int(0, 2**32 - 1),
    "cv_below": _int(0, 10_000_000),
    "folds": _int(2, 20),
    "search": _bool,
    "target_val": _path(optional=True),
    "adapt_epochs": _int(1, 10_000),
    "robustness": _bool,
    "overwrite": _bool,
    "cache_dir": _path(optional=True),
    "use_cache": _bool,
    "model": _path(optional=True),
    "input_size": lambda v: _int(MIN_INPUT_SIZE, MAX_INPUT_SIZE, optional=True)(v),
    "labels": _path(optional=True),
}


def _mode_fields() -> dict[str, tuple[type[Mode], bool]]:
    """{field: (its Mode, whether it may be unset)}, read from CompileConfig's annotations, so a
    choice is declared once, by its type."""
    import types
    import typing

    found = {}
    for name, hint in typing.get_type_hints(CompileConfig).items():
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
        modes = [a for a in args if isinstance(a, type) and issubclass(a, Mode)]
        if modes:
            found[name] = (modes[0], type(None) in args)
    return found


_MODE_FIELDS = _mode_fields()
_RULES.update({name: _choice(mode, optional) for name, (mode, optional) in _MODE_FIELDS.items()})
