"""Shared fixtures: tiny generated datasets, and where the shared real data lives."""

from __future__ import annotations

import atexit
import importlib.abc
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Compiles in tests cache their stages in a throw-away folder, never in the user's ~/.cache.
# Removed when the run ends: each run's stages fill it with up to 150 MB of models.
os.environ["EDGETL_CACHE"] = tempfile.mkdtemp(prefix="edgetl-test-cache-")
atexit.register(shutil.rmtree, os.environ["EDGETL_CACHE"], ignore_errors=True)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGETL_SHARED", REPO.parent / "shared"))
FLOWERS12 = SHARED / "datasets" / "flowers12"


def write_color_dataset(root: Path, classes=("red", "green", "blue"), per_class=12, size=32, seed=0) -> Path:
    """Class folders of noisy solid-colour images: learnable in seconds by a tiny model."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (220, 220, 30)}
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(base[name]) + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i}.png")
    return root


BASE_COLOURS = np.array([(220, 30, 30), (30, 200, 40), (30, 40, 220), (220, 220, 30)])


def colour_images(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Noisy solid-colour pixels in memory (uint8), the classes in turn; pixels span (nearly)
    0..255, so int8 calibration sees the whole range."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(BASE_COLOURS)
    x = BASE_COLOURS[y][:, None, None, :] + rng.normal(0, 25, (n, size, size, 3))
    return np.clip(x, 0, 255).astype(np.uint8), y


@pytest.fixture
def color_dataset(tmp_path) -> Path:
    return write_color_dataset(tmp_path / "colors")


# The fast tier: tests/fast holds the tests that import no TensorFlow (configuration, stage
# declarations and cache keys, candidate choice, the accuracy gate, statistics, layer rules);
# `python -m pytest -q tests/fast` runs them alone in seconds. When only that folder is
# collected, importing TensorFlow (or tf_keras, tfmot, tf2onnx) is an ImportError, so a test
# that reaches for it fails instead of quietly making the tier slow; tests/test_fast_tier.py
# runs the tier that way inside the full suite, so CI checks it too.
FAST = Path(__file__).resolve().parent / "fast"
HEAVY = ("tensorflow", "tf_keras", "tensorflow_model_optimization", "tf2onnx", "keras")


class _RefuseHeavyImports(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"the fast test tier imports no {name.split('.')[0]} (tests/conftest.py); move the test to tests/")


def pytest_collection_modifyitems(session, config, items):
    if items and all(Path(str(item.fspath)).resolve().is_relative_to(FAST) for item in items):
        loaded = [name for name in HEAVY if name in sys.modules]
        if loaded:
            raise RuntimeError(f"collecting the fast tier imported {', '.join(loaded)}")
        sys.meta_path.insert(0, _RefuseHeavyImports())
