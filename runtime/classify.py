"""Top-k classification of image files with any session: what `edgetl predict` prints.

Images are decoded and resized by `runtime.images.load_image`, the exact policy the compile
used (and wrote into model_info.json), so a file gets the scores the compile report implies.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from edgetl.errors import DataError
from edgetl.runtime._session import Session


# A folder can hold thousands of photos: they are decoded and run a chunk at a time, so memory
# stays that of one chunk (256 images at 224 px: 38 MB) whatever the folder holds.
CHUNK_IMAGES = 256


@dataclasses.dataclass(frozen=True)
class Prediction:
    path: Path
    top: tuple[tuple[str, float], ...]  # (label, probability), best first

    def to_json(self) -> dict:
        return {"image": str(self.path), "top": [{"label": lb, "probability": round(p, 6)} for lb, p in self.top]}


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def looks_like_probabilities(scores: np.ndarray, atol: float = 1e-2) -> bool:
    """Non-negative rows that sum to 1 (within what a quantized output keeps)."""
    if scores.size == 0:
        return True
    return bool((scores >= -1e-6).all() and np.allclose(scores.sum(axis=1), 1.0, atol=atol))


def classify_files(
    session: Session, images: list[Path], top_k: int = 3, batch_size: int = 32
) -> tuple[list[Prediction], list[str], list[str]]:
    """(predictions for the readable images, one line per unreadable image, notes on assumptions).

    A folder in `images` stands for the image files under it (runtime/images.py, `images_in`),
    so `edgetl predict model.tflite device_photos/` classifies a whole folder; a folder with no
    image files is a DataError before anything runs.
    """
    from edgetl.runtime.images import IMAGE_SUFFIXES, images_in, load_image

    size = session.input_size
    labels = session.info().labels
    failures: list[str] = []
    paths: list[Path] = []
    for path in map(Path, images):
        if path.is_dir():
            unreadable: list[tuple[Path, OSError]] = []
            inside = images_in(path, unreadable)
            # A folder that cannot be listed is said, not silently left out: its images are missing.
            failures += [f"{folder}: the folder cannot be read ({exc.strerror or exc}), so its images were left out"
                         for folder, exc in unreadable]
            if not inside:
                if unreadable:
                    raise DataError(f"'{path}' holds no image file that can be read: {failures[-1]}")
                raise DataError(f"'{path}' is a folder with no image files in it (by name: {', '.join(sorted(IMAGE_SUFFIXES))})")
            paths += inside
        else:
            paths.append(path)
    good: list[Path] = []
    score_rows: list[np.ndarray] = []
    for start in range(0, len(paths), CHUNK_IMAGES):
        pixels = []
        for path in paths[start : start + CHUNK_IMAGES]:
            try:
                pixels.append(load_image(path, size))
                good.append(path)
            except DataError as exc:
                failures.append(str(exc).split("; pass")[0].removeprefix("cannot read image "))
        if pixels:
            score_rows.append(session.predict(np.stack(pixels), batch_size=batch_size))
    notes: list[str] = []
    if not good:
        return [], failures, notes
    scores = np.concatenate(score_rows)
    if not looks_like_probabilities(scores):
        scores = softmax(scores.astype(np.float64)).astype(np.float32)
        notes.append("the model's outputs are not probabilities (rows do not sum to 1): softmax applied")
    k = max(1, min(top_k, scores.shape[1]))
    predictions = []
    for path, row in zip(good, scores):
        order = np.argsort(-row, kind="stable")[:k]
        predictions.append(Prediction(path, tuple((labels[i], float(row[i])) for i in order)))
    return predictions, failures, notes
