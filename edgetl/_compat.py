"""The one place that decides which Keras edgetl uses.

tensorflow-model-optimization (pruning, QAT) only works with legacy Keras 2 (`tf_keras`);
with Keras 3 it raises on functional models. TensorFlow reads TF_USE_LEGACY_KERAS when it is
first imported, so this module must run before any `import tensorflow`: `edgetl/__init__.py`
imports it, and every edgetl module lives inside the `edgetl` package.
"""

from __future__ import annotations

import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
# TensorFlow's C++ start-up chatter (oneDNN notices, CUDA probing) is noise for a CLI user.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if "tensorflow" in sys.modules and "tf_keras" not in sys.modules:  # pragma: no cover
    # TensorFlow was imported first; tf.keras may already be bound to Keras 3. edgetl itself
    # always uses `tf_keras` directly, so this is only a hint for tfmot users.
    import warnings

    warnings.warn(
        "tensorflow was imported before edgetl: import edgetl first so that "
        "tensorflow-model-optimization sees legacy Keras (TF_USE_LEGACY_KERAS=1).",
        stacklevel=2,
    )


def __getattr__(name: str):
    # `from edgetl._compat import tf, keras` imports TensorFlow only when a stage needs it.
    if name == "tf":
        import tensorflow

        return tensorflow
    if name == "keras":
        import tf_keras

        return tf_keras
    raise AttributeError(name)
