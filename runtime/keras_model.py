"""The Keras reference: the source model every export is checked against.

Loads a `.keras` / `.h5` file or a SavedModel folder with tf_keras. This is the one runtime
that imports TensorFlow, and only when a Keras model is opened.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.errors import ModelFileError, UnsafeModelError
from edgetl.runtime._session import Session, check_class_output, check_image_input


def is_saved_model(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "saved_model.pb").is_file()


class KerasSession(Session):
    runtime = "keras"

    def __init__(self, path: Path | None = None, model=None, threads: int | None = None, trust_model: bool = False):
        super().__init__(Path(path) if path else Path("<in memory>"))
        if model is None:  # refuse a hostile file before TensorFlow starts (and logs)
            from edgetl.runtime.model_safety import refuse_code_in_model_file

            refuse_code_in_model_file(self.path, trust_model)
        if threads:
            _set_tf_threads(threads)
        self.threads = threads
        if model is None:
            model = load_keras_model(self.path, trust_model=trust_model)
        self.model = model
        if isinstance(model.input_shape, list) or isinstance(model.output_shape, list):
            raise ModelFileError(f"{self.path}: expected one image input and one output; edgetl runs image classifiers only")
        self._size = check_image_input(model.input_shape, self.path)
        self._classes = check_class_output(
            [1 if d is None else d for d in model.output_shape[:1]] + list(model.output_shape[1:]), self.path
        )

    @property
    def input_dtype(self) -> str:
        return "float32"

    def invoke(self, tensor: np.ndarray) -> np.ndarray:
        # model(x, training=False) rather than predict(): no per-call tf.data set-up.
        return self.model(tensor, training=False).numpy()


def _set_tf_threads(threads: int) -> None:
    from edgetl._compat import tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already initialised in this process: keep its setting
        pass


def load_keras_model(path: Path, trust_model: bool = False):
    """A tf_keras model from a .keras / .h5 file or SavedModel folder.

    Unless `trust_model`, the file is first read without loading it, and refused
    (UnsafeModelError) when it holds code that loading would run (runtime/model_safety.py);
    .keras files also load in Keras' safe mode.
    """
    from edgetl.runtime.model_safety import TRUST_HINT, refuse_code_in_model_file

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if path.is_dir() and not is_saved_model(path):
        raise ModelFileError(f"{path} is a folder but not a SavedModel (no saved_model.pb in it)")
    refuse_code_in_model_file(path, trust_model)  # before TensorFlow: nothing of the file runs

    from edgetl._compat import keras
    from edgetl.runtime import keras_layers  # noqa: F401  (registers ImagePreprocessing)
    try:
        if path.suffix.lower() == ".keras":
            return keras.models.load_model(str(path), compile=False, safe_mode=not trust_model)
        return keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # noqa: BLE001 - h5py, zipfile, protobuf... all mean "cannot load"
        reason = " ".join(str(exc).split())[:300]
        if "safe_mode" in reason:  # Keras' own safe mode found code our inspection did not name
            raise UnsafeModelError(f"{path}: refusing to load: Keras' safe mode found code in it; {TRUST_HINT}") from None
        raise ModelFileError(f"{path}: not a loadable Keras model ({type(exc).__name__}: {reason})") from None
