"""Classification metrics on held-out images: accuracy, per-class precision/recall/F1, confusion."""

from __future__ import annotations

import numpy as np

from edgetl.compiler.evaluation.stats import wilson_interval


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(probs).argmax(1)
    cm = confusion_matrix(y_true, y_pred, len(classes))
    tp = np.diag(cm).astype(np.float64)
    predicted, actual = cm.sum(0), cm.sum(1)
    # A class never predicted has undefined precision; report 0 (as scikit-learn's zero_division=0).
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    per_class = [
        {
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(actual[i]),
        }
        for i, name in enumerate(classes)
    ]
    return {
        "images": int(len(y_true)),
        "accuracy": float(tp.sum() / max(len(y_true), 1)),
        "correct": int(tp.sum()),
        "ci95": list(wilson_interval(int(tp.sum()), int(len(y_true)))),
        "macro_f1": float(f1.mean()) if len(classes) else 0.0,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }
