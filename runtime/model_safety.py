"""Look inside a Keras model file before loading it: code in a model file never runs unasked.

A legacy HDF5 model (`.h5`) or a SavedModel folder stores its architecture as JSON, and Keras
rebuilds it from there. A `Lambda` layer carries its Python function as marshalled bytecode,
which tf_keras rebuilds and runs while loading (legacy formats ignore `safe_mode`); a config
that names a `module` makes Keras import it; a SavedModel's graph can hold ops that write files
or call back into Python. So the file is read here with h5py / protobuf / zipfile, which run
nothing, and refused when it holds any of those, unless the user passes `--trust-model`.

What is looked at, per format:
  .h5 / .hdf5    the `model_config` and `training_config` attributes (JSON)
  SavedModel     keras_metadata.pb (JSON per layer), the object graph's layer metadata (older
                 SavedModels keep it there), and every graph function a layer can call
  .keras         config.json inside the zip (Keras' safe mode also refuses lambdas there)
A weights-only .h5 (no `model_config`) holds no code and passes.
"""

from __future__ import annotations

import builtins
import json
import zipfile
from pathlib import Path

from edgetl.errors import UnsafeModelError

TRUST_HINT = (
    "if you trust where the file comes from, pass --trust-model (or load it yourself and "
    "re-save it as .keras without the code)"
)

# Packages whose classes a model config may name (Keras imports a config's `module`).
_SAFE_MODULES = ("keras", "tf_keras", "tensorflow", "tensorflow_model_optimization", "edgetl")

# Graph ops that reach outside the tensors: call back into Python, or touch files.
_PYTHON_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
_FILE_OPS = {
    "WriteFile", "ReadFile", "MatchingFiles", "Save", "SaveSlices", "SaveV2", "MergeV2Checkpoints",
    "CreateSummaryFileWriter", "CreateSummaryDbWriter", "WriteSummary", "WriteScalarSummary",
    "WriteHistogramSummary", "WriteImageSummary", "WriteAudioSummary", "WriteGraphSummary",
    "WriteRawProtoSummary", "ImportEvent", "DebugIdentityV2", "DebugIdentityV3",
}


def _config_findings(config, where: str) -> list[str]:
    """Constructs in a Keras config (parsed JSON) that would run or import code when rebuilt."""
    found: list[str] = []

    def walk(node) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        class_name = node.get("class_name")
        name = (node.get("config") or {}).get("name") if isinstance(node.get("config"), dict) else None
        module = node.get("module")
        if class_name == "Lambda":  # its function, bytecode and module are one finding
            found.append(f"a Lambda layer{f' {name!r}' if name else ''} (Python code) in {where}")
            return
        elif class_name == "__lambda__":
            found.append(f"a serialised Python lambda (marshalled bytecode) in {where}")
        elif "lambda" in (node.get("function_type"), node.get("output_shape_type")):
            found.append(f"marshalled Python bytecode in a {class_name or 'layer'} in {where}")
        elif isinstance(module, str):
            top = module.split(".")[0]
            target = node.get("registered_name") or (node.get("config") if isinstance(node.get("config"), str) else class_name)
            if top == "builtins":
                if isinstance(target, str) and hasattr(builtins, target):
                    found.append(f"a reference to Python's builtin {target!r} in {where}")
            elif top not in _SAFE_MODULES:
                found.append(f"an import of module {module!r} in {where}")
        for value in node.values():
            walk(value)

    walk(config)
    return found


def _json_findings(text, where: str) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        config = json.loads(text)
    except (TypeError, ValueError):
        return []  # Keras cannot rebuild anything from it either: loading fails on its own
    return _config_findings(config, where)


def _h5_findings(path: Path) -> list[str]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return [
                finding
                for attr in ("model_config", "training_config")
                if attr in f.attrs
                for finding in _json_findings(f.attrs[attr], f"its {attr}")
            ]
    except OSError:
        return []  # not an HDF5 file: Keras fails on it with its own message


def _keras_zip_findings(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo("config.json")
            if info.file_size > 64 << 20:  # an architecture is kilobytes; refuse a zip bomb
                return [f"a config.json of {info.file_size} bytes"]
            return _json_findings(zf.read(info), "config.json")
    except (OSError, KeyError, zipfile.BadZipFile):
        return []


def _graph_findings(meta_graph) -> list[str]:
    """Python-callback ops anywhere; file ops in any function a layer can call.

    The saver's own functions (reached only from the graph's save/restore nodes) legitimately
    use SaveV2 and friends; loading never calls them, so only Python ops count there."""
    library = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    roots: set[str] = set()
    for node in meta_graph.object_graph_def.nodes:
        kind = node.WhichOneof("kind")
        if kind == "function":
            roots.update(node.function.concrete_functions)
        elif kind == "bare_concrete_function":
            roots.add(node.bare_concrete_function.concrete_function_name)

    def callees(function):
        for node in function.node_def:
            for attr in node.attr.values():
                if attr.HasField("func"):
                    yield attr.func.name
                yield from (f.name for f in attr.list.func)

    reachable: set[str] = set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name in reachable or name not in library:
            continue
        reachable.add(name)
        stack.extend(callees(library[name]))

    found = []
    for name, function in library.items():
        banned = _PYTHON_OPS | (_FILE_OPS if name in reachable else set())
        ops = sorted({n.op for n in function.node_def} & banned)
        if ops:
            found.append(f"graph op {', '.join(ops)} in function {name}")
    ops = sorted({n.op for n in meta_graph.graph_def.node} & _PYTHON_OPS)
    if ops:
        found.append(f"graph op {', '.join(ops)} in the graph")
    return found


def _saved_model_findings(folder: Path) -> list[str]:
    from google.protobuf.message import DecodeError

    from edgetl.runtime.litert import native_stderr

    with native_stderr():  # TensorFlow's start-up lines must not join a one-line refusal
        from edgetl._compat import tf  # noqa: F401  (the protobuf modules below come with it)
        from tensorflow.core.protobuf import saved_model_pb2

    found: list[str] = []
    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString((folder / "saved_model.pb").read_bytes())
    except (OSError, DecodeError):
        return []  # unreadable: tf_keras fails on it too, before rebuilding anything
    for meta_graph in saved_model.meta_graphs:
        for node in meta_graph.object_graph_def.nodes:
            if node.WhichOneof("kind") == "user_object" and node.user_object.metadata:
                found += _json_findings(node.user_object.metadata, "the object graph")
        found += _graph_findings(meta_graph)
    metadata_file = folder / "keras_metadata.pb"
    if metadata_file.is_file():
        from tf_keras.protobuf import saved_metadata_pb2

        metadata = saved_metadata_pb2.SavedMetadata()
        try:
            metadata.ParseFromString(metadata_file.read_bytes())
        except (OSError, DecodeError):
            return found + ["an unreadable keras_metadata.pb"]
        for node in metadata.nodes:
            found += _json_findings(node.metadata, "keras_metadata.pb")
    return found


def code_in_model_file(path: str | Path) -> list[str]:
    """What in a Keras model file (.h5, .keras, SavedModel folder) would run code when loaded.

    Reads the file without loading it; [] for a file with none of it, and for a file of
    another kind (those fail to load on their own)."""
    path = Path(path)
    if path.is_dir():
        return _saved_model_findings(path) if (path / "saved_model.pb").is_file() else []
    if not path.is_file():
        return []
    with open(path, "rb") as f:
        head = f.read(8)
    if head == b"\x89HDF\r\n\x1a\n":
        return _h5_findings(path)
    if head[:4] == b"PK\x03\x04":
        return _keras_zip_findings(path)
    return []


def refuse_code_in_model_file(path: str | Path, trust_model: bool = False) -> None:
    """Raise UnsafeModelError (one line: what was found, how to proceed) unless trusted."""
    if trust_model:
        return
    findings = list(dict.fromkeys(code_in_model_file(path)))
    if findings:
        more = f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""
        raise UnsafeModelError(
            f"{path}: refusing to load: it holds {findings[0]}{more}, which would run when the "
            f"model is opened; {TRUST_HINT}"
        )
