"""An offline demo dataset: four classes of procedural textures, made from nothing but numpy.

It proves the whole pipeline works on this machine with no network (offline ImageNet weights,
training, export, the parity checks, the report); it says nothing about accuracy on real photos.
One deliberately truncated JPEG shows how unreadable files are reported and skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DEMO_CLASSES = ("stripes", "checks", "dots", "rings")


def _grid(size: int, rng: np.random.Generator):
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, np.pi)
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    return x, y, u, v


def _mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    x, y, u, v = _grid(size, rng)
    freq = rng.uniform(4, 10)
    if kind == "stripes":
        return np.sin(2 * np.pi * freq * u) > 0
    if kind == "checks":
        return (np.sin(2 * np.pi * freq * u) > 0) ^ (np.sin(2 * np.pi * freq * v) > 0)
    if kind == "dots":
        cell = 1.0 / freq
        du = (u % cell) / cell - 0.5
        dv = (v % cell) / cell - 0.5
        return du**2 + dv**2 < rng.uniform(0.05, 0.15)
    if kind == "rings":
        cx, cy = rng.uniform(0.2, 0.8, size=2)
        r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        return np.sin(2 * np.pi * freq * r) > 0
    raise ValueError(kind)


def make_image(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    fg, bg = rng.uniform(0, 255, size=(2, 3))
    image = np.where(_mask(kind, size, rng)[..., None], fg, bg)
    image += rng.normal(0, 12, image.shape)  # sensor-like noise
    return np.clip(image, 0, 255).astype(np.uint8)


def make_demo_dataset(root: Path, per_class: int = 40, size: int = 224, seed: int = 0) -> Path:
    """Write DEMO_CLASSES x per_class JPEGs under root/<class>/, plus one truncated JPEG."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for kind in DEMO_CLASSES:
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(make_image(kind, size, rng)).save(folder / f"{kind}_{i:03d}.jpg", quality=90)
    broken = (root / DEMO_CLASSES[0] / f"{DEMO_CLASSES[0]}_000.jpg").read_bytes()
    (root / DEMO_CLASSES[0] / "truncated_upload.jpg").write_bytes(broken[: len(broken) // 3])
    return root
