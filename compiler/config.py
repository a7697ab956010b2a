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
    batch_size: int = 32
    dropout: float = 0.2
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self):
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))

    @property
    def weights_arg(self) -> str | None:
        """teacher_weights as create_model takes it."""
        return None if self.teacher_weights.lower() == "none" else self.teacher_weights

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["data"], d["out"] = str(self.data), str(self.out)
        return d
