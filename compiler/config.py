"""The resolved configuration of one compile: what the CLI builds and the Python API takes."""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class CompileConfig:
    data: Path
    out: Path
    teacher: str = "resnet50"
    # "imagenet" (the registry's pretrained weights), a path to a weights file, or "none" for
    # random initialisation (explicit only: edgetl never falls back to random weights).
    teacher_weights: str = "imagenet"
    # Stage 1: the linear probe on cached features of the frozen backbone (compiler/probe.py).
    # Stage 2: the top of the backbone unfrozen, low learning rate, batch-norm statistics frozen.
    finetune_epochs: int = 8
    finetune_learning_rate: float = 1e-4
    patience: int = 3
    # Distillation: the student that is deployed ("none": deploy the teacher itself).
    student: str = "efficientnet_lite0"
    student_size: int | None = None  # None: the target's, else the student's own input size (resolved())
    student_weights: str = "imagenet"
    distill_epochs: int = 12
    distill_learning_rate: float = 3e-4
    # Chosen on flowers12's validation split (benchmarks/distill_sweep.py, lite2 -> lite0, same
    # budget): (alpha, T) = (0.5, 2) and (0.9, 4) reached 100% val, (0.9, 2) and (0.5, 4) 99.07%,
    # the labels-only baseline 96.3%; the tie went to the milder (0.5, 2).
    temperature: float = 2.0
    alpha: float = 0.5  # share of the teacher's soft targets in the loss (0: labels only)
    unlabeled: Path | None = None  # images without labels: the soft term, and adaptation (--adapt)
    # Adaptation of the deployed model to the --unlabeled images (compiler/adapt.py): none, bn
    # (AdaBN + int8 calibration on them), shot (AdaBN + SHOT self-training), or auto: with
    # --target-val the best there, else the measured default (ADAPT_DEFAULT). Ignored without
    # --unlabeled.
    adapt: str = "auto"
    target_val: Path | None = None  # a small labelled set from the target camera: chooses and reports
    adapt_epochs: int = 3  # self-training epochs (shot)
    robustness: bool = True  # score the deployed files on the corruption suite (compiler/robustness.py)
    baseline: bool = True  # also train the student without the teacher, for the ablation
    # Quantization and pruning (compiler/optimize.py).
    # None = the target's choice, else the default (see resolved()).
    quantize: str | None = None  # auto (fastest within the gate), fp32, fp16, dynamic, int8
    io_dtype: str | None = None  # input/output type of full-integer files: uint8, int8 or float32
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
    target: str | None = None  # a device profile (compiler/targets.py)
    threads: int | None = None  # latency measurement threads (default: the target's, else 4, capped by cores)
    batch_size: int = 32
    dropout: float = 0.2
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    # Small data (compiler/crossval.py): below `cv_below` labelled training images, choices
    # (probe or fine-tuning, and for how many epochs) are made by `folds`-fold cross-validation
    # and nothing is carved for val or test; the deployed model is refit on all of them.
    # "holdout" or "cv" force one way. 600: a 15% val split of fewer than ~90 images moves by
    # more than a point per image, too coarse to pick epochs or the probe on its own.
    # 3 folds, not 5: each fold trains the model, so the cost is (folds - 1) trainings on the
    # whole set; 3 folds keep a compile of a few hundred images at about 2-3x a held-out one.
    # (The probe's C, cheap on cached features, always uses 5 folds.)
    selection: str = "auto"
    cv_below: int = 600
    folds: int = 3
    seed: int = 0
    overwrite: bool = False
    # Stage cache (compiler/cache.py): None = the default location; use_cache False = always retrain.
    cache_dir: Path | None = None
    use_cache: bool = True

    def __post_init__(self):
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        for name in ("unlabeled", "target_val", "cache_dir"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))

    def resolved(self) -> "CompileConfig":
        """Every setting decided: the target's profile fills what the user left open, then the
        defaults. Nothing is left for run time to decide, so the cache keys and recipe.yaml see
        the values actually used (`student_size: null` and 224 are the same lite0 student)."""
        import os

        from edgetl.compiler.targets import get_target
        from edgetl.models import get_config

        target = get_target(self.target) if self.target else None
        student_size = None  # no student (--student none): no student size
        if self.distills:
            student_size = self.student_size or (target.student_size if target else get_config(self.student).input_size)
        return dataclasses.replace(
            self,
            quantize=self.quantize or (target.quantize if target else "auto"),
            io_dtype=self.io_dtype or (target.io_dtype if target else "uint8"),
            student_size=student_size,
            threads=self.threads or min(target.threads if target else 4, os.cpu_count() or 1),
        )

    def validate(self) -> None:
        from edgetl.errors import EdgetlError

        choices = {
            "quantize": ("auto", "fp32", "fp16", "dynamic", "int8"),
            "io_dtype": ("uint8", "int8", "float32"),
            "selection": ("auto", "cv", "holdout"),
            "adapt": ("auto", "none", "bn", "shot"),
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise EdgetlError(f"--{name.replace('_', '-')} {value!r} is not one of {', '.join(allowed)}")
        if not 2 <= self.folds <= 20:
            raise EdgetlError(f"--folds {self.folds} must be a number of cross-validation folds in [2, 20], e.g. 5")
        if self.cv_below < 0:
            raise EdgetlError(f"--cv-below {self.cv_below} must be a number of images (0 or more), e.g. 600")
        if not 0.0 <= self.prune < 1.0:
            raise EdgetlError(f"--prune {self.prune} must be a sparsity in [0, 1), e.g. 0.5")
        if self.cluster and not 2 <= self.cluster <= 256:
            raise EdgetlError(f"--cluster {self.cluster} must be a number of shared values in [2, 256], e.g. 16")
        if self.adapt not in ("auto", "none") and self.unlabeled is None:
            raise EdgetlError(f"--adapt {self.adapt} adapts to images from the device: give them with --unlabeled DIR")
        if self.target_val is not None and self.unlabeled is None:
            raise EdgetlError("--target-val scores adaptation to the device's images: give those too with --unlabeled DIR")
        if self.cluster and self.prune == 0:
            raise EdgetlError("--cluster shares the weights of a pruned model: give --prune too, e.g. --prune 0.5 --cluster 16")

    @property
    def distills(self) -> bool:
        return self.student.lower() != "none"

    @staticmethod
    def weights_arg(weights: str) -> str | None:
        """A weights option as create_model takes it ("none" -> random initialisation)."""
        return None if weights.lower() == "none" else weights

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["data"], d["out"] = str(self.data), str(self.out)
        d["unlabeled"] = str(self.unlabeled) if self.unlabeled else None
        d["target_val"] = str(self.target_val) if self.target_val else None
        d["cache_dir"] = str(self.cache_dir) if self.cache_dir else None
        return d
