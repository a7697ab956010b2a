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
    # Stage 1: a new head trained on cached features of the frozen backbone (cheap epochs).
    head_epochs: int = 40
    head_learning_rate: float = 1e-3
    # Stage 2: the top of the backbone unfrozen, low learning rate, batch-norm statistics frozen.
    finetune_epochs: int = 8
    finetune_learning_rate: float = 1e-4
    patience: int = 3
    # Distillation: the student that is deployed ("none": deploy the teacher itself).
    student: str = "efficientnet_lite0"
    student_size: int | None = None  # None: the student's own input size
    student_weights: str = "imagenet"
    distill_epochs: int = 12
    distill_learning_rate: float = 3e-4
    temperature: float = 4.0
    alpha: float = 0.7  # share of the teacher's soft targets in the loss (0: labels only)
    unlabeled: Path | None = None  # images without labels, used for the soft term alone
    baseline: bool = True  # also train the student without the teacher, for the ablation
    batch_size: int = 32
    dropout: float = 0.2
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    overwrite: bool = False
    # Stage cache (compiler/cache.py): None = the default location; use_cache False = always retrain.
    cache_dir: Path | None = None
    use_cache: bool = True

    def __post_init__(self):
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        for name in ("unlabeled", "cache_dir"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))

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
        d["cache_dir"] = str(self.cache_dir) if self.cache_dir else None
        return d
