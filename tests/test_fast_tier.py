"""The fast tier (tests/fast) imports no TensorFlow: run alone, as a developer runs it, it refuses
any import of TensorFlow, tf_keras, tfmot or tf2onnx (tests/conftest.py). Inside the full suite
TensorFlow is already loaded by the time those tests run, so this runs the tier once more in a
fresh interpreter, where the rule holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_the_fast_tier_passes_alone_without_tensorflow():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TESTS / "fast")],
        cwd=TESTS.parent, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout.splitlines()[-1]
