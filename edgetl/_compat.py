"""The one place that decides which Keras edgetl uses.

tensorflow-model-optimization (pruning, QAT) only works with legacy Keras 2 (`tf_keras`);
with Keras 3 it raises on functional models. TensorFlow reads TF_USE_LEGACY_KERAS when it is
first imported, so this module must run before any `import tensorflow`: `edgetl/__init__.py`
imports it, and every edgetl module lives inside the `edgetl` package.
"""

from __future__ import annotations

import contextlib
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


def debug() -> bool:
    """`edgetl --debug` (or EDGETL_DEBUG=1): let TensorFlow's own logging through."""
    return os.environ.get("EDGETL_DEBUG", "") not in ("", "0")


@contextlib.contextmanager
def stderr_silenced():
    """File descriptor 2 to /dev/null for the block (C++ writes included), unless debugging.

    TF_CPP_MIN_LOG_LEVEL does not silence TensorFlow's start-up lines ("All log messages before
    absl::InitializeLog()", oneDNN, cudart_stub, "failed call to cuInit"): C++ writes them
    before absl logging is set up. Only the descriptor itself can be redirected.
    """
    if debug():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_started = False


def _start_tensorflow():
    """Import TensorFlow and tf_keras and probe the devices once, quietly (see stderr_silenced);
    then keep TensorFlow's and absl's Python loggers to errors, unless debugging."""
    global _started
    if not _started:
        with stderr_silenced():
            import tensorflow
            import tf_keras  # noqa: F401 (imports its own share of TensorFlow's C++ libraries)

            tensorflow.config.list_physical_devices()  # the CUDA probe prints "failed call to cuInit"
        if not debug():
            import logging

            tensorflow.get_logger().setLevel(logging.ERROR)
            with contextlib.suppress(ImportError):
                from absl import logging as absl_logging

                absl_logging.set_verbosity(absl_logging.ERROR)
        _started = True
    return sys.modules["tensorflow"]


def __getattr__(name: str):
    # `from edgetl._compat import tf, keras` imports TensorFlow only when a stage needs it.
    if name == "tf":
        return _start_tensorflow()
    if name == "keras":
        _start_tensorflow()
        import tf_keras

        return tf_keras
    raise AttributeError(name)
