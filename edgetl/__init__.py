"""edgetl: an edge-deployment model compiler.

Importing this package never imports TensorFlow (so `edgetl --help` is instant); it only
selects legacy Keras for when TensorFlow is imported later.
"""

from edgetl import _compat  # noqa: F401  (must run before anything imports TensorFlow)

__version__ = "0.1.0"
