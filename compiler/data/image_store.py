"""Decoded images on disk: each split decoded once per input size into one .npy file.

Why on disk and not in memory: a compile used to hold every split as uint8 arrays at each
input size a model needs, so its peak memory grew by about 0.4 MB per image (2.8 GB at 400
images, 4.0 GB at 3,200; issue 19). Here the pixels are written once to a plain .npy file
(uint8 [N, SIZE, SIZE, 3], readable with `np.load`) and read back a batch at a time.

Rows are read with `os.pread`, not through a memory map: pages of a mapped file that training
touches count as the process's resident memory until they are unmapped, so an epoch over a
mapped file would grow resident memory with the dataset again. A read copies one batch and
leaves the rest to the operating system's page cache, which it gives back under pressure.

Decoding is `compiler.data.load_image`, exactly as strict as before: a file that fails to
decode raises DataError and the half-written file is removed.

This module stays free of TensorFlow (compiler/data/streaming.py turns these into tf.data).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edgetl.compiler.data.datasets import _WORKERS, Dataset, Sample
from edgetl.compiler.progress import progress_bar
from edgetl.runtime.images import check_size, load_image

__all__ = ["DiskImages", "ImageFolder", "rows_of", "write_images"]


def write_images(
    samples: Sequence[Sample], size: int, path: Path, *, progress: Callable[[int], object] | None = None
) -> "DiskImages":
    """Decode `samples` at `size` into the .npy file `path` (in order) and return it for reading.

    Each decoded row is written at its offset with `os.pwrite` as soon as it is ready: at most
    a few rows (one per worker) are in memory at any time, whatever the number of images.
    """
    size = check_size(size)
    samples = list(samples)
    row_bytes = size * size * 3
    header = _npy_header(len(samples), size)
    tmp = path.with_name(path.name + ".partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, header)
        os.ftruncate(fd, len(header) + row_bytes * len(samples))

        def fill(i: int) -> None:
            row = load_image(samples[i].path, size)  # raises DataError on a file broken since the scan
            os.pwrite(fd, row.tobytes(), len(header) + i * row_bytes)

        with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
            # map() in order, consumed as it goes: only a bounded number of rows in flight.
            for _ in pool.map(fill, range(len(samples))):
                if progress is not None:
                    progress(1)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    return DiskImages([(path, len(samples), len(header))], size)


def _npy_header(n: int, size: int) -> bytes:
    """The .npy header of a C-ordered uint8 [n, size, size, 3] array (so `np.load` reads the file)."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": (n, size, size, 3)}
    )
    return buffer.getvalue()


class DiskImages:
    """uint8 images [N, size, size, 3] stored in one or more .npy files, read on demand.

    Indexing like an array (`x[i]`, `x[a:b]`, `x[index_array]`, `x[bool_mask]`) reads those rows
    into a new in-memory array; `take(indices)` returns a lazy view of some rows (a fold's
    images) that reads nothing; `np.asarray(x)` reads everything (avoid on large sets).
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, parts: list[tuple[Path, int, int]], size: int, rows: np.ndarray | None = None):
        self.parts = list(parts)  # (file, rows in it, header bytes)
        self.size = int(size)
        self._total = sum(n for _, n, _ in self.parts)
        self.rows = None if rows is None else np.asarray(rows, np.int64)

    # --- array-like surface ------------------------------------------------------------------
    def __len__(self) -> int:
        return self._total if self.rows is None else len(self.rows)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), self.size, self.size, 3)

    @property
    def nbytes(self) -> int:
        return len(self) * self.size * self.size * 3

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.read(np.array([key], np.int64))[0]
        return self.read(np.arange(len(self), dtype=np.int64)[key])

    def __array__(self, dtype=None, copy=None):
        out = self.read(np.arange(len(self), dtype=np.int64))
        return out if dtype is None else out.astype(dtype)

    def astype(self, dtype) -> np.ndarray:
        """Every row, converted (an in-memory copy: for small splits only)."""
        return np.asarray(self).astype(dtype)

    def __repr__(self) -> str:
        return f"DiskImages({len(self)} x {self.size}px from {[str(p) for p, _, _ in self.parts]})"

    # --- views ---------------------------------------------------------------------------------
    def take(self, indices) -> "DiskImages":
        """The rows at `indices` (in that order), read only when asked for."""
        indices = np.asarray(indices, np.int64)
        base = np.arange(self._total, dtype=np.int64) if self.rows is None else self.rows
        return DiskImages(self.parts, self.size, base[indices])

    def concat(self, other: "DiskImages") -> "DiskImages":
        """These rows followed by `other`'s, without copying pixels."""
        if other.size != self.size:
            raise ValueError(f"cannot join {self.size} px and {other.size} px images")
        mine = np.arange(self._total, dtype=np.int64) if self.rows is None else self.rows
        theirs = (np.arange(other._total, dtype=np.int64) if other.rows is None else other.rows) + self._total
        return DiskImages(self.parts + other.parts, self.size, np.concatenate([mine, theirs]))

    # --- reading -------------------------------------------------------------------------------
    def read(self, indices: np.ndarray) -> np.ndarray:
        """Rows at positions `indices` of this view, as a new uint8 array."""
        indices = np.asarray(indices, np.int64)
        if len(indices) and (indices.min() < -len(self) or indices.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} images")
        indices = np.where(indices < 0, indices + len(self), indices)
        global_rows = indices if self.rows is None else self.rows[indices]
        out = np.empty((len(global_rows), self.size, self.size, 3), np.uint8)
        row_bytes = self.size * self.size * 3
        starts = np.cumsum([0] + [n for _, n, _ in self.parts])
        fds: dict[int, int] = {}
        try:
            for i, g in enumerate(global_rows):
                part = int(np.searchsorted(starts, g, side="right") - 1)
                path, _, header = self.parts[part]
                if part not in fds:
                    fds[part] = os.open(path, os.O_RDONLY)
                offset = header + int(g - starts[part]) * row_bytes
                view = memoryview(out[i]).cast("B")
                got = os.preadv(fds[part], [view], offset)
                if got != row_bytes:
                    raise OSError(f"short read from {path}: {got} of {row_bytes} bytes")
        finally:
            for fd in fds.values():
                os.close(fd)
        return out


def rows_of(x, indices):
    """`x[indices]` for an in-memory array; a lazy view for DiskImages (a fold of the images)."""
    return x.take(indices) if isinstance(x, DiskImages) else x[indices]


class ImageFolder:
    """Where a compile's decoded images live: a given folder, or a temporary one it removes."""

    def __init__(self, folder: Path | None = None):
        self._temporary = folder is None
        self.path = Path(tempfile.mkdtemp(prefix="edgetl-images-")) if folder is None else Path(folder)
        self.path.mkdir(parents=True, exist_ok=True)
        if self._temporary:  # removed at exit too, for callers that never call remove()
            weakref.finalize(self, shutil.rmtree, str(self.path), True)

    def file(self, split: str, size: int) -> Path:
        return self.path / f"{split}-{size}px.npy"

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class ImageCache:
    """Each split decoded and resized once per input size, however many models need it.

    The pixels go to one .npy file per split and size in `folder` (ImageFolder above), not
    into memory: `get` returns a DiskImages that training streams from a batch at a time,
    so memory does not grow with the number of images. Without a folder a temporary one is used;
    `close()` removes it either way.

    With cross-validation there is no val split and maybe no test split: asking for one gives
    the training images instead (export parity, the quantization gate and the golden images need
    some images; they measure fidelity to the float model, not generalisation). `held_out`
    says which splits are real, and the report says so next to every figure.
    """

    def __init__(self, dataset: Dataset, unlabeled=(), folder: Path | None = None):
        self.samples = {**dataset.splits, "unlabeled": list(unlabeled)}
        self.held_out = {split: bool(self.samples.get(split)) for split in ("val", "test")}
        self._arrays: dict[tuple[str, int], tuple[object, np.ndarray]] = {}
        self.folder = ImageFolder(folder)

    def get(self, split: str, size: int):
        """(images, labels): images a DiskImages (uint8 [N, size, size, 3], read on demand)."""
        if split in self.held_out and not self.held_out[split]:
            split = "train"
        if self.samples.get(split) is self.samples["train"]:  # the same images (--model): decoded once
            split = "train"
        key = (split, size)
        if key not in self._arrays:
            samples = self.samples[split]
            labels = np.fromiter((s.label for s in samples), dtype=np.int64, count=len(samples))
            with progress_bar(f"load {split} ({size} px)", len(samples)) as advance:
                images = write_images(samples, size, self.folder.file(split, size), progress=advance)
            self._arrays[key] = (images, labels)
        return self._arrays[key]

    def close(self) -> None:
        self._arrays.clear()
        self.folder.remove()

