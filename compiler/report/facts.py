"""The figures a report states, read from report.json the same way everywhere.

The console summary, report.html and `edgetl report` all ask these functions for "the accuracy
of X" so that each figure comes with its 95% Wilson interval and its n, and says how it was
measured: on the held-out test split, or (a compile without a test split) by cross-validation.
Two models are compared by their paired difference on the same test images when the report
holds per-image answers; otherwise only their intervals can be set side by side.

No TensorFlow, no NumPy: `edgetl report` stays instant.
"""

from __future__ import annotations

import dataclasses

from edgetl.compiler.evaluation.stats import PairedDifference, describe_accuracy, paired_difference, wilson_interval


# report.json's top-level fields that every reader relies on, and what each must be.
_SECTIONS = {"artifacts": list, "deployed": dict, "models": dict, "dataset": dict}
# config fields that `edgetl bench --data` reads to find the compile's test split, and their types.
_CONFIG_FIELDS = {"seed": int, "val_fraction": (int, float), "test_fraction": (int, float),
                  "cv_below": int, "batch_size": int, "selection": str}


def report_shape_problem(report) -> str | None:
    """What makes `report` (parsed report.json) unreadable as an edgetl compile report, in words,
    or None. Checks the shape every reader relies on, so that a hand-edited or foreign file is
    refused in one line rather than failing halfway through a summary or a benchmark."""
    if not isinstance(report, dict):
        return f"it holds a JSON {type(report).__name__}, not an object"
    missing = [k for k in _SECTIONS if k not in report]
    if missing:
        return f"{', '.join(missing)} missing"
    for key, kind in _SECTIONS.items():
        if not isinstance(report[key], kind):
            return f'"{key}" is a {type(report[key]).__name__}, not a {kind.__name__}'
    if not all(isinstance(a, dict) for a in report["artifacts"]):
        return '"artifacts" holds something other than objects'
    classes = report["dataset"].get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        return '"dataset.classes" is not a list of class names'
    config = report.get("config", {})
    if not isinstance(config, dict):
        return f'"config" is a {type(config).__name__}, not an object'
    for key, kind in _CONFIG_FIELDS.items():
        if config.get(key) is not None and (not isinstance(config[key], kind) or isinstance(config[key], bool)):
            return f'"config.{key}" is {config[key]!r}'
    if not isinstance(report.get("total_s", 0), (int, float)):
        return f'"total_s" is {report["total_s"]!r}, not a number'
    return None


@dataclasses.dataclass(frozen=True)
class Figure:
    """An accuracy as a report states it."""

    accuracy: float
    n: int
    low: float
    high: float
    source: str  # "test" or "cv"
    folds: int | None = None

    def describe(self) -> str:
        """'93.8% (95% CI 90.0-96.2%, n=240)'; cross-validated figures say so."""
        text = describe_accuracy(self.accuracy, self.n) if self.source == "test" else (
            f"{self.accuracy:.1%} (95% CI {self.low:.1%}-{self.high:.1%}, n={self.n})"
        )
        if self.source == "cv":
            text += f" by {self.folds}-fold cross-validation" if self.folds else " by cross-validation"
        return text

    def short(self) -> str:
        """'93.8% [90.0-96.2] n=240': for table cells."""
        return f"{self.accuracy:.1%} [{self.low * 100:.1f}-{self.high * 100:.1f}] n={self.n}" + (" (cv)" if self.source == "cv" else "")


def macro_f1_text(entry: dict) -> str:
    """A model's macro F1 from the same source as its accuracy figure: test, else "(cv)"; or ""."""
    if entry.get("test"):
        return f"{entry['test']['macro_f1']:.3f}"
    cv = entry.get("cv") or {}
    return f"{cv['macro_f1']:.3f} (cv)" if cv.get("macro_f1") is not None else ""


def accuracy_figure(entry: dict | None) -> Figure | None:
    """The accuracy of a model or artefact entry of report.json: its test figure, else its
    cross-validated one ("cv": {"accuracy", "n", "ci95", "folds"}), else None."""
    if not entry:
        return None
    test = entry.get("test")
    if test and test.get("images"):
        n = int(test["images"])
        low, high = wilson_interval(round(test["accuracy"] * n), n)
        return Figure(float(test["accuracy"]), n, low, high, "test")
    cv = entry.get("cv")
    if cv and cv.get("n"):
        low, high = cv.get("ci95") or wilson_interval(round(cv["accuracy"] * cv["n"]), cv["n"])
        return Figure(float(cv["accuracy"]), int(cv["n"]), float(low), float(high), "cv", cv.get("folds"))
    return None


def deployed_artifact(report: dict) -> dict | None:
    chosen = report["deployed"].get("tflite")
    return next((a for a in report["artifacts"] if a["file"] == chosen), None)


def deployed_figure(report: dict) -> Figure | None:
    """model.tflite's own test accuracy; without a test split, the cross-validated estimate of
    the model it was converted from (the file itself was never scored then)."""
    figure = accuracy_figure(deployed_artifact(report))
    if figure is None:
        figure = accuracy_figure(report["models"].get(report["deployed"].get("model")))
    return figure


def how_measured(report: dict) -> str:
    """One sentence on where the accuracy figures come from."""
    figure = deployed_figure(report)
    if figure is None:
        return "No accuracy was measured: the compile had neither a test split nor a cross-validated estimate."
    measured = (report.get("evaluation") or {}).get("measured")
    if figure.source == "test" and report["deployed"].get("model") == "source" and measured:
        return measured  # --model: nothing was trained here, but the user's model may have seen the images
    if figure.source == "test":
        copies = (report.get("dataset") or {}).get("test_copies_of_train") or 0
        if copies:  # the data check warned; the sentence must not call them unseen
            return (f"Accuracies are measured on the test split ({figure.n} images, {copies} of them byte-identical copies "
                    "of training images, so not all unseen: remove the copies for a held-out figure); brackets give the "
                    "95% Wilson interval.")
        return (f"Accuracies are measured on the held-out test split ({figure.n} images the training never saw); "
                "brackets give the 95% Wilson interval.")
    folds = f"{figure.folds}-fold " if figure.folds else ""
    return (f"There is no test split: accuracies are {folds}cross-validated estimates over {figure.n} labelled images "
            "(each image scored by a model that did not train on it), for the float model; the deployed file "
            "itself was not scored on held-out images. Brackets give the 95% interval.")


def test_predictions(report: dict) -> list[dict]:
    return report.get("deployed", {}).get("test_predictions") or []


def correct_vector(report: dict, role: str | None = None) -> list[bool] | None:
    """Per test image, whether model.tflite (role None) or the Keras model `role` was right."""
    rows = test_predictions(report)
    if not rows:
        return None
    if role is None:
        return [r["predicted"] == r["true"] for r in rows]
    if not all(role in r.get("keras", {}) for r in rows):
        return None
    return [r["keras"][role]["predicted"] == r["true"] for r in rows]


def compare_deployed_with(report: dict, role: str) -> PairedDifference | None:
    """model.tflite minus the Keras model `role` on the same test images, or None when the
    report lacks the per-image answers."""
    a, b = correct_vector(report), correct_vector(report, role)
    if a is None or b is None:
        return None
    return paired_difference(a, b)


def compare_roles(report: dict, role_a: str, role_b: str) -> PairedDifference | None:
    a, b = correct_vector(report, role_a), correct_vector(report, role_b)
    if a is None or b is None:
        return None
    return paired_difference(a, b)


def intervals_overlap(a: Figure, b: Figure) -> bool:
    return a.low <= b.high and b.low <= a.high


def distillation_sentence(d: dict) -> str:
    """What distillation bought against the labels-only baseline, in words, with its paired
    interval: a difference is called a gain or a loss only when it is beyond noise."""
    where = "out of fold (cross-validation)" if "cross-validation" in d.get("measured_on", "") else "on the test split"
    gain = d["distillation_gain_accuracy"] * 100
    paired = d.get("distillation_gain_paired")
    if paired is None:  # reports written before the paired interval existed
        verdict = f"distillation changed accuracy by {gain:+.1f} points {where}"
    else:
        low, high = (v * 100 for v in paired["ci95"])
        if paired["significant"]:
            verdict = f"distillation {'gained' if gain > 0 else 'lost'} {abs(gain):.1f} points {where} (95% CI {low:+.1f} to {high:+.1f}, n={paired['n']})"
        else:
            verdict = (f"distillation made no difference beyond noise {where}: {gain:+.1f} points "
                       f"(95% CI {low:+.1f} to {high:+.1f}, n={paired['n']})")
    sentence = f"{verdict}, against the same student trained without the teacher"
    behind = d.get("student_minus_teacher_accuracy")
    if behind is not None:
        behind *= 100
        sentence += ("; the student is as accurate as the teacher" if abs(behind) < 0.05 else
                     f"; the student is {abs(behind):.1f} points {'above' if behind > 0 else 'below'} the teacher")
    return sentence
