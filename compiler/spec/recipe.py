"""recipe.yaml and manifest.json: how to build the same thing again, and what was built.

recipe.yaml is the fully resolved CompileConfig (target defaults applied), so
`edgetl compile --recipe build/flowers/recipe.yaml` replays the build, and any option given
beside it changes just that setting. manifest.json records what the build consumed and made:
the dataset's content hash and split lists, package versions, and a hash of every artefact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path

from edgetl.atomic import atomic_write_text
from edgetl.compiler.spec.config import CompileConfig
from edgetl.errors import EdgetlError

RECIPE_FILE = "recipe.yaml"
MANIFEST_FILE = "manifest.json"
PACKAGES = (
    "edgetl", "tensorflow", "tf-keras", "tensorflow-model-optimization", "tf2onnx", "onnx", "onnxruntime",
    "ai-edge-litert", "numpy", "pillow",
)


def recipe_text(config: CompileConfig) -> str:
    import yaml

    header = "# edgetl recipe: `edgetl compile --recipe THIS_FILE` builds it again; options given beside it win.\n"
    settings = config.to_json()
    # Inputs as absolute paths: a recipe replayed from another folder must find the same data.
    # `out` stays as given (a replay usually names its own).
    for name in ("data", "unlabeled", "target_val", "cache_dir"):
        if settings.get(name):
            settings[name] = str(Path(settings[name]).resolve())
    return header + yaml.safe_dump(settings, sort_keys=False)


def write_recipe(config: CompileConfig, out: Path) -> Path:
    path = Path(out) / RECIPE_FILE
    atomic_write_text(path, recipe_text(config))
    return path


def load_recipe(path: Path) -> dict:
    """The settings of a recipe file, checked against CompileConfig's fields."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise EdgetlError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise EdgetlError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise EdgetlError(f"{path} must hold a mapping of settings (as edgetl writes in recipe.yaml)")
    known = {f.name for f in dataclasses.fields(CompileConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise EdgetlError(f"{path}: unknown settings {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return data


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_manifest(out: Path, dataset, stage_keys: dict, data_hash: str) -> Path:
    out = Path(out)
    artefacts = {
        p.relative_to(out).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size}
        for p in sorted(out.rglob("*"))
        # Hidden files and folders (the decoded-image store, .images/) are working files, never published.
        if p.is_file() and p.name != MANIFEST_FILE and not any(part.startswith(".") for part in p.relative_to(out).parts)
    }
    manifest = {
        "dataset": {
            "root": str(dataset.root),
            "content_sha256": data_hash,
            "classes": dataset.classes,
            "splits": {split: [s.path.relative_to(dataset.root).as_posix() for s in samples] for split, samples in dataset.splits.items()},
        },
        "stage_keys": stage_keys,
        "packages": package_versions(),
        "platform": platform.platform(),
        "artefacts": artefacts,
    }
    path = out / MANIFEST_FILE
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
    return path
