"""Check an exported file against its source model on the same held-out images."""

from __future__ import annotations

import dataclasses

import numpy as np
from edgetl.compiler.evaluation.stats import ci95


@dataclasses.dataclass(frozen=True)
class ParityResult:
    artifact: str
    runtime: str
    images: int
    top1_agreement: float
    max_abs_diff: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def to_json(self) -> dict:
        # Agreement is a share of `images` like an accuracy, and as uncertain: its Wilson interval.
        return {**dataclasses.asdict(self), "top1_agreement_ci95": list(ci95(self.top1_agreement, self.images)),
                "passed": self.passed}

    def describe_failure(self) -> str:
        return (
            f"{self.artifact} ({self.runtime}) disagrees with the Keras model: max |p - p_keras| = "
            f"{self.max_abs_diff:.3g} > tolerance {self.tolerance:g}, top-1 agreement "
            f"{self.top1_agreement:.1%} on {self.images} test images"
        )


def compare(artifact: str, runtime: str, probs: np.ndarray, reference: np.ndarray, tolerance: float) -> ParityResult:
    """Top-1 agreement and worst probability difference of `probs` against `reference`."""
    if probs.shape != reference.shape:
        return ParityResult(artifact, runtime, len(reference), 0.0, float("inf"), tolerance)
    agreement = float(np.mean(probs.argmax(1) == reference.argmax(1))) if len(probs) else 1.0
    max_diff = float(np.max(np.abs(probs - reference))) if len(probs) else 0.0
    return ParityResult(artifact, runtime, len(reference), agreement, max_diff, tolerance)
