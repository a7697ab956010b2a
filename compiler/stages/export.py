"""The export and verify stages: the deployed model as float32 TFLite and ONNX files, each run in
its own runtime against its Keras model before it counts as made."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from edgetl.compiler.data.image_store import ImageCache
from edgetl.compiler.progress import activity
from edgetl.compiler.stages.trained import TrainedModel
from edgetl.errors import ExportMismatchError, ModelFileError, ResourceError, SettingError


def export_float(deployed: TrainedModel, out: Path, cached: dict | None) -> dict[str, Path]:
    """The deployed model as `model.unverified.{tflite,onnx}` in `out`: converted, or copied from
    the stage cache's earlier (verified) exports of the same model. `verify_float` checks them."""
    from edgetl.compiler.export.convert import export_onnx, export_tflite

    if cached:
        unverified = {fmt: out / f"model.unverified.{fmt}" for fmt in ("tflite", "onnx")}
        for fmt, path in unverified.items():
            shutil.copyfile(cached[f"model.fp32.{fmt}"], path)
        return unverified
    with activity("convert to TFLite"), conversion_errors(deployed, "the float TFLite conversion"):
        tflite_file = export_tflite(deployed.model, out / "model.unverified.tflite")
    with activity("convert to ONNX"), conversion_errors(deployed, "the ONNX conversion"):
        onnx_file = export_onnx(deployed.model, out / "model.unverified.onnx")
    return {"tflite": tflite_file, "onnx": onnx_file}


@contextlib.contextmanager
def conversion_errors(deployed: TrainedModel, what: str, still_works: str = "nothing can be exported until it converts"):
    """A converter's failure on a model the user brought, as one line naming the op or layer.

    edgetl's own models convert by construction; a user's may hold ops TFLite or tf2onnx lack."""
    if deployed.role != "source":
        yield
        return
    try:
        yield
    except (ExportMismatchError, SettingError, ResourceError):
        raise
    except Exception as exc:  # noqa: BLE001 - converter errors come in many types, all mean "cannot convert"
        import re

        text = " ".join(str(exc).split())
        named = re.findall(r"'(tf\.[A-Za-z0-9_]+|tfl\.[A-Za-z0-9_]+)' op|layer[ \"']+([A-Za-z0-9_./-]+)", text)
        where = next((a or b for a, b in named), None)
        detail = f"at {where}" if where else f"({type(exc).__name__}: {text[:200]})"
        raise ModelFileError(f"{deployed.name}: {what} failed {detail}; {still_works}") from None


def predict_keras(config, images: ImageCache, *trained_models) -> None:
    """Each Keras model's probabilities on the test split, at its own input size."""
    from edgetl.runtime.keras_model import KerasSession

    for trained in filter(None, trained_models):
        if trained.test_probs is None:
            x_test, _ = images.get("test", trained.input_size)
            trained.test_probs = KerasSession(model=trained.model).predict(x_test, config.batch_size)


def verify_float(out: Path, deployed: TrainedModel, unverified: dict, images: ImageCache, batch_size: int) -> dict:
    """Run each float export in its runtime against the Keras model; a miss fails the compile."""
    from edgetl.compiler.compression.optimize import VARIANTS_DIR
    from edgetl.compiler.export.verify import compare
    from edgetl.runtime import open_session

    x_test, _ = images.get("test", deployed.input_size)
    verified = {}
    for fmt, path in unverified.items():
        session = open_session(path)
        probs = session.predict(x_test, batch_size)
        parity = compare(path.name, session.runtime, probs, deployed.test_probs, deployed.config.export_atol)
        if not parity.passed:
            raise ExportMismatchError(f"{parity.describe_failure()}; the file is kept as {path}")
        final = out / VARIANTS_DIR / f"model.fp32.{fmt}"
        final.parent.mkdir(exist_ok=True)
        os.replace(path, final)
        verified[fmt] = final
    return verified

