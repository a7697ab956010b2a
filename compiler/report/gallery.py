"""The gallery of mistakes: every test image model.tflite got wrong, as thumbnails.

Grouped by confusion pair (true -> predicted), the pair with most mistakes first, and within a
pair the most confident mistake first: a confident mistake is either the model's worst failure
or a wrong label, and both are worth a look before anything else.

A mistake is flagged as a possible label error when it is confident AND repeated: the deployed
file gives the other class at least LABEL_ERROR_CONFIDENCE, and every other trained model (the
teacher, the baseline; not the deployed model's own float twin, which shares its weights) gives
that same class too. With no independent model to repeat it, a very confident mistake
(SOLO_LABEL_ERROR_CONFIDENCE) is flagged alone. A flag asks for a look, it proves nothing.
"""

from __future__ import annotations

import base64
import dataclasses
import io
from pathlib import Path

LABEL_ERROR_CONFIDENCE = 0.8
SOLO_LABEL_ERROR_CONFIDENCE = 0.95
THUMBNAIL_PX = 128
MAX_THUMBNAILS = 300  # beyond this the page lists the mistakes without pictures (size of the page)


@dataclasses.dataclass
class Mistake:
    path: str  # relative to the data root
    true: str
    predicted: str
    confidence: float
    possible_label_error: bool
    agreeing_models: list[str]  # other models that give the same wrong class


@dataclasses.dataclass
class ConfusionGroup:
    true: str
    predicted: str
    mistakes: list[Mistake]


def _independent_roles(report: dict) -> list[str]:
    """Keras models other than the one model.tflite was converted from."""
    deployed_role = report["deployed"].get("model")
    return [role for role in report.get("models", {}) if role != deployed_role]


def misclassified(report: dict) -> list[ConfusionGroup]:
    """The test images model.tflite got wrong, grouped and ordered for the gallery."""
    rows = report.get("deployed", {}).get("test_predictions") or []
    independent = _independent_roles(report)
    groups: dict[tuple[str, str], list[Mistake]] = {}
    for r in rows:
        if r["predicted"] == r["true"]:
            continue
        answers = r.get("keras", {})
        agreeing = [role for role in independent if answers.get(role, {}).get("predicted") == r["predicted"]]
        present = [role for role in independent if role in answers]
        if present:
            flagged = r["confidence"] >= LABEL_ERROR_CONFIDENCE and len(agreeing) == len(present)
        else:
            flagged = r["confidence"] >= SOLO_LABEL_ERROR_CONFIDENCE
        groups.setdefault((r["true"], r["predicted"]), []).append(
            Mistake(r["path"], r["true"], r["predicted"], float(r["confidence"]), flagged, agreeing)
        )
    ordered = [
        ConfusionGroup(true, predicted, sorted(mistakes, key=lambda m: (-m.confidence, m.path)))
        for (true, predicted), mistakes in groups.items()
    ]
    ordered.sort(key=lambda g: (-len(g.mistakes), -g.mistakes[0].confidence, g.true, g.predicted))
    return ordered


def thumbnail_uri(root: str | Path, relative: str, px: int = THUMBNAIL_PX) -> str | None:
    """A small JPEG of the image as a data URI, or None when it cannot be read (data moved)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(Path(root) / relative) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            im.thumbnail((px, px))
            buffer = io.BytesIO()
            im.save(buffer, format="JPEG", quality=82)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
