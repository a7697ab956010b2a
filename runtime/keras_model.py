"""The Keras reference: the source model every export is checked against."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.errors import ModelFileError
from edgetl.runtime._session import Session, check_image_input


class KerasSession(Session):
    runtime = "keras"

    def __init__(self, path: Path | None = None, model=None):
        super().__init__(Path(path) if path else Path("<in memory>"))
        if model is None:
            model = load_keras_model(self.path)
        self.model = model
        self._size = check_image_input(model.input_shape, self.path)

    @property
    def input_size(self) -> int:
        return self._size

    @property
    def num_classes(self) -> int:
        return int(self.model.output_shape[-1])

    @property
    def input_dtype(self) -> str:
        return "float32"

    def run(self, images: np.ndarray) -> np.ndarray:
        # model(x, training=False) rather than predict(): no per-call tf.data set-up.
        return self.model(images.astype(np.float32), training=False).numpy()


def load_keras_model(path: Path):
    from edgetl._compat import keras
    from edgetl.models import _layers  # noqa: F401  (registers ImagePreprocessing)

    if not Path(path).exists():
        raise ModelFileError(f"model file not found: {path}")
    try:
        return keras.models.load_model(str(path), compile=False)
    except Exception as exc:
        raise ModelFileError(f"{path}: not a loadable Keras model ({exc})") from None
