"""edgetl.compiler: from a folder of images to checked, deployable model files.

    from edgetl.compiler import CompileConfig, compile_model
    report = compile_model(CompileConfig(data="photos", out="build/flowers", teacher="efficientnet_lite0"))

`pipeline` is the spine that runs the stages in order; beside it `cache` (stage keys), `outputs`
(staging, the lock), `progress` and `demo`. Sub-packages by kind: `spec` (what to build),
`data`, `training`, `compression`, `export`, `evaluation`, `report`. Importing this package
imports no TensorFlow: the two names below are loaded on first use.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"compile_model": "edgetl.compiler.pipeline", "CompileConfig": "edgetl.compiler.spec.config"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
