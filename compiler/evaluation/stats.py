"""Honest accuracy figures: intervals for a proportion and for a paired difference.

Every accuracy edgetl prints or writes comes with its n and a 95% interval, because on a few
hundred images one photo moves accuracy by a point or more. Wilson's score interval is used
for a single accuracy: unlike the textbook normal interval it stays inside [0, 1] and keeps
its coverage near 0% and 100%, where small image sets often are (Brown, Cai and DasGupta,
Statistical Science 2001).

Two models scored on the same images are compared by their paired difference (each image
counts +1, 0 or -1), not by two separate intervals: the pairing removes the images both get
right or both get wrong, which is most of them. A difference is called a gain only when its
interval excludes zero.

Pure NumPy-free Python on purpose: the CLI, the report and the tests import it without
TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for `correct` successes out of `n`; (0, 1) when n is 0."""
    if n < 0 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n, got correct={correct}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At 0 and n the bounds are exactly 0 and 1 (the formula leaves rounding dust there).
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == n else min(1.0, centre + half)
    return low, high


def widest_half_interval(accuracies, n: int) -> float:
    """The largest half-width of the 95% Wilson intervals of several accuracies on n images: how
    far any figure of a curve or table can be trusted, said once for all of them (1.0 when n is 0)."""
    if not n:
        return 1.0
    return max((high - low) / 2 for low, high in (wilson_interval(round(a * n), n) for a in accuracies))


def ci95(accuracy: float, n: int) -> tuple[float, float]:
    """The Wilson 95% interval of an accuracy over n images, rounded for report.json."""
    low, high = wilson_interval(round(accuracy * n), n)
    return round(low, 4), round(high, 4)


def accuracy_span(accuracy: float, interval: Sequence[float]) -> str:
    """A table cell: '95.8% (93.1%-97.5%)'. The column header says it is a 95% interval and
    gives n once, so each cell stays short."""
    low, high = interval
    return f"{accuracy:.1%} ({low:.1%}-{high:.1%})"


def points_span(difference: float, interval: Sequence[float]) -> str:
    """A table cell for a paired difference given as fractions: '+1.2 pt (-0.4 to +2.8)'."""
    low, high = interval
    return f"{difference * 100:+.1f} pt ({low * 100:+.1f} to {high * 100:+.1f})"


@dataclasses.dataclass(frozen=True)
class Accuracy:
    """An accuracy with its sample size and 95% Wilson interval."""

    correct: int
    n: int

    @property
    def value(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n)

    def to_json(self) -> dict:
        low, high = self.interval
        return {"accuracy": self.value, "correct": self.correct, "n": self.n, "ci95": [low, high]}

    def describe(self) -> str:
        """'97.5% (95% CI 94.6-98.9%, n=240)'"""
        return describe_accuracy(self.value, self.n)


def describe_accuracy(accuracy: float, n: int) -> str:
    """An accuracy as people should read it: the figure, its 95% interval and its n."""
    if n <= 0:
        return "n/a (no images)"
    correct = round(accuracy * n)
    low, high = wilson_interval(correct, n)
    return f"{accuracy:.1%} (95% CI {low:.1%}-{high:.1%}, n={n})"


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """Accuracy of A minus accuracy of B on the same n images, with a 95% interval."""

    difference: float
    low: float
    high: float
    n: int
    a_only: int  # images A gets right and B wrong
    b_only: int  # images B gets right and A wrong

    @property
    def significant(self) -> bool:
        """True when the interval excludes zero: the difference is bigger than the noise."""
        return self.low > 0 or self.high < 0

    def span(self) -> str:
        """'+2.1 points, 95% CI -0.4 to +4.6, n=120'."""
        return f"{self.difference * 100:+.1f} points, 95% CI {self.low * 100:+.1f} to {self.high * 100:+.1f}, n={self.n}"

    def verdict(self, a: str, b: str) -> str:
        """One sentence a person can act on."""
        points = self.difference * 100
        span = self.span()
        if not self.significant:
            return f"{a} and {b} are within noise of each other ({span})"
        better, worse = (a, b) if points > 0 else (b, a)
        return f"{better} is better than {worse} ({span})"

    def to_json(self) -> dict:
        return {
            "difference": self.difference,
            "ci95": [self.low, self.high],
            "n": self.n,
            "a_only_correct": self.a_only,
            "b_only_correct": self.b_only,
            "significant": self.significant,
        }


def paired_difference(correct_a: Sequence[bool], correct_b: Sequence[bool], z: float = Z95) -> PairedDifference:
    """Difference of two accuracies measured on the same images (Newcombe's method 10).

    Newcombe (Statistics in Medicine 1998) builds the interval from the two Wilson intervals
    and the correlation of the pairs; it keeps its coverage on small n where the plain
    normal interval of the mean difference is too narrow.
    """
    if len(correct_a) != len(correct_b):
        raise ValueError(f"paired scores need the same images: {len(correct_a)} vs {len(correct_b)}")
    n = len(correct_a)
    if n == 0:
        return PairedDifference(0.0, -1.0, 1.0, 0, 0, 0)
    both = sum(1 for a, b in zip(correct_a, correct_b) if a and b)
    a_only = sum(1 for a, b in zip(correct_a, correct_b) if a and not b)
    b_only = sum(1 for a, b in zip(correct_a, correct_b) if b and not a)
    neither = n - both - a_only - b_only
    k_a, k_b = both + a_only, both + b_only
    p_a, p_b = k_a / n, k_b / n
    l_a, u_a = wilson_interval(k_a, n, z)
    l_b, u_b = wilson_interval(k_b, n, z)
    # phi: correlation of the paired outcomes, 0 when a margin is empty.
    margins = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    phi = (both * neither - a_only * b_only) / math.sqrt(margins) if margins > 0 else 0.0
    d = p_a - p_b
    low = d - math.sqrt(max(0.0, (p_a - l_a) ** 2 - 2 * phi * (p_a - l_a) * (u_b - p_b) + (u_b - p_b) ** 2))
    high = d + math.sqrt(max(0.0, (u_a - p_a) ** 2 - 2 * phi * (u_a - p_a) * (p_b - l_b) + (p_b - l_b) ** 2))
    return PairedDifference(d, max(-1.0, low), min(1.0, high), n, a_only, b_only)
