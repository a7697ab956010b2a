"""Stage cache: a trained model is reused when the inputs and settings of its stage are unchanged.

Each expensive stage (teacher fine-tuning, student head, distillation, baseline, QAT, pruning)
has a key: the hash of everything that determines its result (the dataset's content hash and
split settings, the stage's own settings, the keys of the stages it starts from). Its model is
stored under `<cache root>/<stage>-<key>/`, written to a temporary folder and renamed, so a
compile interrupted with Ctrl-C resumes from the last finished stage, and changing only the
quantization re-runs neither training stage.

The cache lives outside the output folder (default `$XDG_CACHE_HOME/edgetl` or
`~/.cache/edgetl`, `EDGETL_CACHE` or `--cache-dir` to move it) so that a new `--out` reuses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

CACHE_FORMAT = 9  # bump when a cached stage's meaning changes


def default_cache_root() -> Path:
    if os.environ.get("EDGETL_CACHE"):
        return Path(os.environ["EDGETL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "edgetl"


def stage_key(stage: str, **inputs) -> str:
    """A short, stable hash of a stage's inputs (JSON-serialisable values)."""
    payload = json.dumps({"stage": stage, "format": CACHE_FORMAT, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def file_digest(path) -> bytes:
    """A digest of one file's bytes, read in blocks: byte-identical files share it. The data
    scan takes it once per labelled image (duplicate checks) and the cache keys reuse it."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.digest()


def hash_digests(digests: Mapping[Path, bytes], root: Path) -> str:
    """Content hash of files from their digests (`file_digest`) and their paths relative to
    root, in sorted order: digests already taken (the scan's) are not read again."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in digests):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(digests[path])
        digest.update(b"\0")
    return digest.hexdigest()


def hash_files(paths, root: Path) -> str:
    """Content hash of files (their bytes and their paths relative to root)."""
    return hash_digests({Path(p): file_digest(p) for p in paths}, root)


class StageCache:
    """Keras models and their stage records, keyed by stage_key. `root=None` disables caching."""

    MODEL = "model.keras"
    RECORD = "record.json"
    ARRAYS = "arrays.npz"  # what a later stage needs besides the model (e.g. fold models)

    def __init__(self, root: Path | None):
        self.root = Path(root) if root is not None else None

    def _dir(self, stage: str, key: str) -> Path:
        return self.root / f"{stage}-{key}"

    def load(self, stage: str, key: str):
        """(model, record, arrays) of a finished stage, or None; arrays is {} when none were stored."""
        if self.root is None:
            return None
        folder = self._dir(stage, key)
        if not (folder / self.RECORD).is_file():
            return None
        from edgetl.runtime.keras_model import load_keras_model

        try:
            record = json.loads((folder / self.RECORD).read_text())
            arrays = {}
            if (folder / self.ARRAYS).is_file():
                import numpy as np

                with np.load(folder / self.ARRAYS, allow_pickle=False) as data:
                    arrays = {name: data[name] for name in data.files}
            return load_keras_model(folder / self.MODEL), record, arrays
        except Exception:  # a damaged entry is a cache miss, never an error
            return None

    def record(self, stage: str, key: str) -> dict | None:
        """The JSON record of a finished stage without loading its model (for the dry run), or None."""
        if self.root is None:
            return None
        try:
            return json.loads((self._dir(stage, key) / self.RECORD).read_text())
        except (OSError, ValueError):  # missing or damaged: a miss, as in load()
            return None

    def load_files(self, stage: str, key: str, names: list[str]) -> dict[str, Path] | None:
        """Paths of files a finished stage stored (e.g. verified exports), or None."""
        if not self.holds(stage, key, names):
            return None
        return {name: self._dir(stage, key) / name for name in names}

    def holds(self, stage: str, key: str, names=None) -> bool:
        """Whether a finished entry is there: its record, or the named files of a files entry."""
        if self.root is None:
            return False
        folder = self._dir(stage, key)
        return all((folder / name).is_file() for name in (names or [self.RECORD]))

    @contextlib.contextmanager
    def _entry(self, stage: str, key: str):
        """Yield a temporary folder that becomes the stage's entry only if the block succeeds."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self._dir(stage, key)
        tmp = Path(tempfile.mkdtemp(prefix=f".{stage}-", dir=self.root))
        try:
            yield tmp
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def store_files(self, stage: str, key: str, files: dict[str, Path]) -> None:
        if self.root is None:
            return
        with self._entry(stage, key) as tmp:
            for name, path in files.items():
                shutil.copyfile(path, tmp / name)

    def store(self, stage: str, key: str, model, record: dict, arrays: dict | None = None) -> None:
        if self.root is None:
            return
        from edgetl._compat import keras

        with self._entry(stage, key) as tmp:
            # An uncompiled twin: no optimizer state, and QAT/pruning wrappers saved as they are.
            keras.Model(model.inputs, model.outputs, name=model.name).save(tmp / self.MODEL)
            if arrays:
                import numpy as np

                np.savez(tmp / self.ARRAYS, **arrays)
            (tmp / self.RECORD).write_text(json.dumps(record, indent=2, default=str))
