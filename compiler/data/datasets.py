"""Dataset scanning, splitting and image loading for `edgetl compile DATA`.

Two layouts are accepted (class names are folder names, sorted):

* ``DATA/train|val|test/<class>/...`` ("splits"): ``val/`` and/or ``test/`` may be missing,
  in which case they are carved out of ``train/`` with a seeded, stratified split.
* ``DATA/<class>/...`` ("class-folders"): everything is split into train/val/test with a
  seeded, stratified split.

Every file is decode-checked up front so that one corrupt photo is reported (and left out)
instead of crashing training an hour later. Decoding is deliberately forgiving about *formats*
(palette, CMYK, 16-bit, alpha, EXIF orientation all become plain 8-bit RGB) and strict about
*data* (a truncated file is skipped, never half-used).

This module must stay free of TensorFlow: it is imported by the CLI for quick checks
(`edgetl predict`, dataset reports) where a multi-second TensorFlow import would hurt.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetl.compiler.cache import file_digest
from edgetl.errors import DataError
# Image decoding is the deployment contract's (runtime/images.py): predict and bench load the same way.
from edgetl.runtime.images import IMAGE_SUFFIXES, RESIZE_POLICY, load_image
from edgetl.runtime.images import check_size as _check_size
from edgetl.runtime.images import files_below as _files_below
from edgetl.runtime.images import list_folder as _subdirs_and_files
from edgetl.runtime.images import decode_failure_reason as _reason
from edgetl.runtime.images import decode_rgb as _decode_rgb

__all__ = [
    "RESIZE_POLICY",
    "SPLITS",
    "Dataset",
    "Sample",
    "SkippedFile",
    "load_image",
    "load_images",
    "scan_dataset",
]

SPLITS = ("train", "val", "test")

# Two workers: the target machines have 2 cores, and Pillow releases the GIL while decoding
# and resizing, so threads give real parallelism without process start-up costs.
_WORKERS = 2

# Imbalance and tiny-split thresholds for warnings (not errors: the user may know better).
_IMBALANCE_RATIO = 3.0
_FEW_PER_CLASS = 5

# Folder names users commonly give to splits; mentioned in errors instead of being guessed.
_SPLIT_ALIASES = {
    "training": "train",
    "validation": "val",
    "valid": "val",
    "dev": "val",
    "eval": "val",
    "testing": "test",
}


# --------------------------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One usable image: absolute path and class index into `Dataset.classes`."""

    path: Path
    label: int


@dataclass(frozen=True)
class SkippedFile:
    """A file that was found but cannot be used. `path` is relative to the dataset root."""

    path: Path
    reason: str


@dataclass(frozen=True)
class Dataset:
    """Result of `scan_dataset`: classes, the three splits, and what was left out and why."""

    root: Path
    classes: list[str]
    layout: str  # "splits" or "class-folders"
    splits: dict[str, list[Sample]]  # keys "train", "val", "test"
    skipped: list[SkippedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Splits that were carved automatically: split -> fraction of the source pool it took.
    carved: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    # How choices are made and accuracy estimated: "holdout" (the val split picks, the test
    # split scores) or "cv" (k-fold cross-validation on all labelled training images: no val
    # split, and no carved test split; a given test/ still scores).
    selection: str = "holdout"
    # path -> digest of its bytes (cache.file_digest), read once by the scan for the duplicate checks
    fingerprints: dict[Path, bytes] = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {class: number of images}}, with every class listed (zeros included)."""
        out: dict[str, dict[str, int]] = {}
        for split in SPLITS:
            per_class = dict.fromkeys(self.classes, 0)
            for s in self.splits.get(split, []):
                per_class[self.classes[s.label]] += 1
            out[split] = per_class
        return out

    def copies_of_training(self, split: str) -> int:
        """How many of `split`'s images are byte-identical to a training image: not unseen."""
        train = {self.fingerprints.get(s.path) for s in self.splits.get("train", [])} - {None}
        return sum(self.fingerprints.get(s.path) in train for s in self.splits.get(split, []))

    def to_report(self) -> dict:
        """A JSON-serialisable summary, written next to the exported model."""
        source = "train" if self.layout == "splits" else "all images"
        return {
            "root": str(self.root),
            "layout": self.layout,
            "classes": list(self.classes),
            "counts": self.counts(),
            "totals": {split: len(self.splits.get(split, [])) for split in SPLITS},
            "carved": {
                split: {"from": source, "fraction": frac, "seed": self.seed, "stratified": True}
                for split, frac in self.carved.items()
            },
            "skipped": [{"path": p.path.as_posix(), "reason": p.reason} for p in self.skipped],
            "warnings": list(self.warnings),
            "test_copies_of_train": self.copies_of_training("test"),
            "selection": self.selection,
            "resize_policy": RESIZE_POLICY,
        }


def _check_file(path: Path) -> str | None:
    """None if `path` decodes to a usable image, else a one-line reason."""
    try:
        img = _decode_rgb(path)  # an empty file raises EmptyFileError: "empty file (0 bytes)"
        if img.width < 1 or img.height < 1:
            return "image has no pixels"
        return None
    except Exception as exc:  # noqa: BLE001 - any failure on a user file means "skip it"
        return _reason(exc)


def load_images(
    samples: Sequence[Sample],
    size: int,
    *,
    progress: Callable[[int], object] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load `samples` into (images uint8 [N, size, size, 3], labels int64 [N]), in order.

    `progress(1)` is called once per image loaded, always from the calling thread (so it can
    drive a UI progress bar safely).
    """
    size = _check_size(size)
    samples = list(samples)
    images = np.empty((len(samples), size, size, 3), dtype=np.uint8)
    labels = np.fromiter((s.label for s in samples), dtype=np.int64, count=len(samples))

    def fill(i: int) -> None:
        # Each worker writes straight into its own row: no per-image result piles up.
        images[i] = load_image(samples[i].path, size)

    if not samples:
        return images, labels
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        futures = [pool.submit(fill, i) for i in range(len(samples))]
        try:
            for fut in as_completed(futures):
                fut.result()  # re-raises a DataError for a file broken since the scan
                if progress is not None:
                    progress(1)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return images, labels


# --------------------------------------------------------------------------------------------
# Scanning
# --------------------------------------------------------------------------------------------


def _names(items: Iterable[str], limit: int = 8) -> str:
    items = list(items)
    shown = ", ".join(f"'{x}'" for x in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _check_fraction(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not (0.0 <= float(value) < 1.0):
        raise DataError(f"{name} must be a number in [0, 1), got {value!r}; pass e.g. 0.15")
    return float(value)


def _class_rng(seed: int, cls: str) -> np.random.Generator:
    # One generator per class, keyed by its name: adding or removing a class leaves the
    # other classes' splits unchanged, and nothing depends on iteration order.
    return np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(cls.encode("utf-8"))])


def _carved_size(n: int, fraction: float) -> int:
    """How many of a class's n images a split of `fraction` takes (at least one when asked for)."""
    return max(1, round(n * fraction)) if fraction > 0 else 0


def _carve(
    pool: list[Path], fractions: dict[str, float], seed: int, cls: str, where: str
) -> dict[str, list[Path]]:
    """Split one class's sorted `pool` into "train" plus the splits in `fractions`."""
    wanted = {s: f for s, f in fractions.items() if f > 0}
    need = 1 + len(wanted)  # at least one image in train and in each carved split
    n = len(pool)
    if n < need:
        splits = " and ".join(["train", *wanted])
        raise DataError(
            f"class '{cls}' has {n} usable image(s) in {where}, too few to split into {splits} "
            f"(minimum {need}); add images to '{cls}' or provide the split folders yourself"
        )
    sizes = {s: _carved_size(n, f) for s, f in wanted.items()}
    # Rounding up to 1 each may eat train on tiny classes: shrink the largest carved split.
    while n - sum(sizes.values()) < 1:
        biggest = max(sizes, key=lambda s: sizes[s])
        sizes[biggest] -= 1
    order = _class_rng(seed, cls).permutation(n)
    out: dict[str, list[Path]] = {}
    start = 0
    for split in fractions:  # fixed order: val then test
        k = sizes.get(split, 0)
        out[split] = sorted(pool[i] for i in order[start : start + k])
        start += k
    out["train"] = sorted(pool[i] for i in order[start:])
    return out


def check_data_folder(root: str | os.PathLike) -> Path:
    """DATA exists and is a folder (DataError otherwise); its resolved path."""
    given = Path(root).expanduser()
    if not given.exists():
        raise DataError(f"dataset folder '{given}' does not exist; pass a folder of class folders")
    if not given.is_dir():
        raise DataError(
            f"dataset path '{given}' is a file, not a folder; pass the folder that holds "
            "the class folders (or train/val/test)"
        )
    return given.resolve()


def scan_dataset(
    root: str | os.PathLike,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    selection: str = "holdout",
    cv_below: int = 0,
    progress: Callable[[int], object] | None = None,
    min_classes: int = 2,
) -> Dataset:
    """Find classes and images under `root`, decode-check every file, and build the splits.

    `val_fraction`/`test_fraction` apply only to splits that are carved automatically: in the
    "splits" layout they are fractions of each class's train images, in the "class-folders"
    layout fractions of each class's images. `progress(1)` is called per file checked.
    Raises DataError for anything that makes the folder unusable.
    """
    val_fraction = _check_fraction("val_fraction", val_fraction)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise DataError(
            f"val_fraction + test_fraction must be below 1, got {val_fraction} + "
            f"{test_fraction}; lower them so that train keeps some images"
        )

    root = check_data_folder(root)
    try:
        top_dirs, top_files = _subdirs_and_files(root)
    except OSError as exc:
        raise DataError(f"cannot list dataset folder '{root}': {exc.strerror or exc}") from exc

    warnings: list[str] = []
    split_dirs = [d for d in top_dirs if d in SPLITS]
    # Layout: {split: {class: folder}}. Files directly at the top are not in any class.
    layout_dirs: dict[str, dict[str, Path]] = {}
    loose: list[str] = [f for f in top_files if Path(f).suffix.lower() in IMAGE_SUFFIXES]

    if split_dirs:
        layout = "splits"
        others = [d for d in top_dirs if d not in SPLITS]
        if others:
            hints = [f"'{d}' should be named '{_SPLIT_ALIASES[d.lower()]}'"
                     for d in others if d.lower() in _SPLIT_ALIASES]
            hints += [f"'{d}' should be named '{d.lower()}'"
                      for d in others if d.lower() in SPLITS]
            hint = f" ({'; '.join(hints)})" if hints else ""
            raise DataError(
                f"'{root}' mixes split folders ({_names(split_dirs)}) with other folders "
                f"({_names(others)}){hint}; use either DATA/train|val|test/<class>/ or "
                "DATA/<class>/, not both"
            )
        if "train" not in split_dirs:
            raise DataError(
                f"'{root}' has {_names(split_dirs)} but no 'train' folder; add "
                "train/<class>/ images (val/test are optional and carved from train)"
            )
        for split in split_dirs:
            cls_dirs, files = _subdirs_and_files(root / split)
            loose += [f"{split}/{f}" for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES]
            if not cls_dirs:
                raise DataError(
                    f"'{split}/' in '{root}' has no class folders; put images in "
                    f"{split}/<class>/ (or remove '{split}/' to have it carved from train)"
                )
            layout_dirs[split] = {c: root / split / c for c in cls_dirs}
        classes = list(layout_dirs["train"])
        for split in ("val", "test"):
            if split not in layout_dirs:
                continue
            have = layout_dirs[split]
            extra = [c for c in have if c not in layout_dirs["train"]]
            if extra:
                raise DataError(
                    f"class {_names(extra)} is in {split}/ but not in train/; add "
                    f"train/<class>/ images for it or remove it from {split}/"
                )
            missing = [c for c in classes if c not in have]
            if missing:
                raise DataError(
                    f"class {_names(missing)} is in train/ but missing from {split}/; add "
                    f"{split}/<class>/ images for it, or remove {split}/ to have it carved "
                    "from train"
                )
    else:
        layout = "class-folders"
        classes = top_dirs
        layout_dirs["all"] = {c: root / c for c in classes}

    if not classes:
        raise DataError(
            f"no class folders found in '{root}'; put images in one folder per class "
            "(DATA/<class>/*.jpg or DATA/train/<class>/*.jpg)"
        )
    # A class name becomes a line of labels.txt and of the model's metadata: one that is blank or
    # holds a line break or another control character cannot, and would fail only at export.
    unusable = [c for c in classes if not c.strip() or any(ord(ch) < 32 or ord(ch) == 127 for ch in c)]
    if unusable:
        raise DataError(
            f"class folder name {unusable[0]!r} cannot be a label: it is blank or holds a line break or another "
            "control character; rename the folder"
        )
    if len(classes) < min_classes:  # 1 where images are only scored (`edgetl bench --data`), not trained on
        where = "train/" if layout == "splits" else str(root)
        raise DataError(
            f"only one class folder ('{classes[0]}') found in {where}; a classifier needs at "
            "least two classes: add another class folder"
        )
    if loose:
        warnings.append(
            f"{len(loose)} image file(s) outside any class folder were ignored "
            f"(e.g. '{loose[0]}'); move them into a class folder to use them"
        )

    # Decode-check every file of every class folder, in parallel.
    found: dict[tuple[str, str], list[Path]] = {
        (group, cls): _files_below(folder)
        for group, per_class in layout_dirs.items()
        for cls, folder in per_class.items()
    }
    all_files = [p for files in found.values() for p in files]
    reasons: dict[Path, str | None] = {}
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        for path, reason in zip(all_files, pool.map(_check_file, all_files)):
            reasons[path] = reason
            if progress is not None:
                progress(1)

    skipped = sorted(
        (SkippedFile(p.relative_to(root), r) for p, r in reasons.items() if r is not None),
        key=lambda s: s.path.as_posix(),
    )
    usable: dict[tuple[str, str], list[Path]] = {}
    for key, files in found.items():
        group, cls = key
        good = [p for p in files if reasons[p] is None]
        if not good:
            where = f"{group}/{cls}" if layout == "splits" else cls
            bad = len(files)
            detail = (f"all {bad} file(s) in it were skipped as unreadable or not images"
                      if bad else "it is empty")
            raise DataError(
                f"class folder '{where}' has no usable images ({detail}); add images or "
                "remove the folder"
            )
        usable[key] = good

    # Small data: no split is carved, cross-validation makes the choices (compiler/training/crossval.py).
    # The threshold counts the labelled images that training and the choices would share: a test
    # split the held-out path would carve is not among them. Without that, 672 images in class
    # folders went the held-out way (672 >= 600) and trained and chose on 576 of them (480 + 96
    # val), below the threshold, while 96 more sat in a carved test split.
    groups = ("train", "val") if layout == "splits" else ("all",)
    pool = sum(len(usable.get((g, c), [])) for g in groups for c in classes)
    carves_test = layout != "splits" or "test" not in layout_dirs
    source_group = "train" if layout == "splits" else "all"
    test_carve = sum(_carved_size(len(usable[(source_group, c)]), test_fraction) for c in classes) if carves_test else 0
    use_cv = selection == "cv" or (selection == "auto" and pool - test_carve < cv_below)
    if use_cv:
        val_fraction = test_fraction = 0.0
        if "val" in layout_dirs:  # a given val/ is labelled data: cross-validation uses it too
            for cls in classes:
                usable[("train", cls)] = sorted(usable[("train", cls)] + usable.pop(("val", cls)))
            del layout_dirs["val"]

    if use_cv:
        # Out of fold, an image is scored by a model trained without it: a class's only image
        # would be scored by a model that never saw its class, and always be wrong.
        group = "train" if layout == "splits" else "all"
        lone = [c for c in classes if len(usable[(group, c)]) < 2]
        if lone:
            where = f"train/{lone[0]}" if layout == "splits" else "its folder"
            raise DataError(
                f"class '{lone[0]}' has {len(usable[(group, lone[0])])} usable image(s) in {where}, too few for "
                f"cross-validation (minimum 2: each held-out image needs one of its class to train on); add images to '{lone[0]}'"
            )

    # Build the splits: keep given ones, carve missing ones per class.
    label = {c: i for i, c in enumerate(classes)}
    per_split: dict[str, dict[str, list[Path]]] = {s: {} for s in SPLITS}
    carved: dict[str, float] = {}
    if layout == "splits":
        to_carve = {s: f for s, f in (("val", val_fraction), ("test", test_fraction))
                    if s not in layout_dirs}
        for cls in classes:
            for split in ("val", "test"):
                if split in layout_dirs:
                    per_split[split][cls] = usable[(split, cls)]
            parts = _carve(usable[("train", cls)], to_carve, seed, cls, f"train/{cls}")
            for split, paths in parts.items():
                per_split[split][cls] = paths
        carved = to_carve
    else:
        to_carve = {"val": val_fraction, "test": test_fraction}
        for cls in classes:
            parts = _carve(usable[("all", cls)], to_carve, seed, cls, "its folder")
            for split, paths in parts.items():
                per_split[split][cls] = paths
        carved = to_carve

    splits = {
        split: [Sample(p, label[cls]) for cls in classes for p in per_split[split].get(cls, [])]
        for split in SPLITS
    }

    # Warnings: things that work but deserve a look.
    train_counts = {c: len(per_split["train"][c]) for c in classes}
    big, small = max(train_counts, key=train_counts.get), min(train_counts, key=train_counts.get)
    if train_counts[big] > _IMBALANCE_RATIO * train_counts[small]:
        warnings.append(
            f"strong class imbalance in train: '{big}' has {train_counts[big]} images, "
            f"'{small}' only {train_counts[small]} (more than {_IMBALANCE_RATIO:g}x); "
            "consider adding images to the small classes"
        )
    for split, frac in carved.items():
        if frac <= 0:
            continue
        thin = [c for c in classes if len(per_split[split][c]) < _FEW_PER_CLASS]
        if thin:
            least = min(len(per_split[split][c]) for c in thin)
            warnings.append(
                f"carved {split} split has fewer than {_FEW_PER_CLASS} images for "
                f"{len(thin)} class(es) (as few as {least}, e.g. {_names(thin, 3)}); its "
                f"metrics will be noisy: add images or provide a {split}/ folder"
            )

    fingerprints = _fingerprints([s.path for split in SPLITS for s in splits[split]])
    warnings.extend(duplicate_warnings(splits, classes, root, fingerprints))

    return Dataset(
        root=root,
        classes=list(classes),
        layout=layout,
        splits=splits,
        skipped=skipped,
        warnings=warnings,
        carved={s: f for s, f in carved.items() if f > 0},
        seed=seed,
        selection="cv" if use_cv else "holdout",
        fingerprints=fingerprints,
    )


def _fingerprints(paths: Sequence[Path]) -> dict[Path, bytes]:
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        return dict(zip(paths, pool.map(file_digest, paths)))


def duplicate_warnings(splits: dict[str, list[Sample]], classes: Sequence[str], root: Path,
                       fingerprints: dict[Path, bytes]) -> list[str]:
    """Warnings about byte-identical image files: a copy in another split is not unseen (the
    test or val figure counts it as new), a copy under another class is a label conflict, and
    two copies in train let cross-validation score one by a fold that trained on the other.
    Web-gathered sets often hold such copies (flowers12's train/iris does, once)."""
    groups: dict[bytes, list[tuple[str, Sample]]] = {}
    for split in SPLITS:
        for s in splits.get(split, []):
            groups.setdefault(fingerprints[s.path], []).append((split, s))
    copies = [g for g in groups.values() if len(g) > 1]
    if not copies:
        return []

    def where(sample: Sample) -> str:
        return sample.path.relative_to(root).as_posix()

    out = []
    conflicts = [g for g in copies if len({s.label for _, s in g}) > 1]
    if conflicts:
        example = " = ".join(f"'{where(s)}' ({classes[s.label]})" for _, s in conflicts[0][:2])
        out.append(f"{len(conflicts)} image(s) appear under two classes (byte-identical files, e.g. {example}): "
                   "one of the labels is wrong; keep the file in its right class only")
    for split in ("test", "val"):
        seen = [g for g in copies if any(sp == split for sp, _ in g) and any(sp == "train" for sp, _ in g)]
        if seen:
            pair = next(s for sp, s in seen[0] if sp == split), next(s for sp, s in seen[0] if sp == "train")
            out.append(f"{len(seen)} {split} image(s) are byte-identical copies of training images (e.g. "
                       f"'{where(pair[0])}' = '{where(pair[1])}'): the {split} figures count them as unseen; "
                       "remove the copies")
    # A copy under another class is already named above as a label conflict: not twice.
    doubled = [g for g in copies if g not in conflicts and sum(sp == "train" for sp, _ in g) > 1]
    within = sum(sum(sp == "train" for sp, _ in g) - 1 for g in doubled)
    if within:
        pair = [s for sp, s in doubled[0] if sp == "train"][:2]
        out.append(f"{within} training image(s) are byte-identical copies of other training images (e.g. "
                   f"'{where(pair[0])}' = '{where(pair[1])}'): they weigh double, and under cross-validation a fold "
                   "that trained on one copy scores the other; remove the copies")
    return out


def unlabeled_overlap_warnings(unlabeled: Sequence[Sample], dataset: Dataset) -> list[str]:
    """Warnings about --unlabeled files that are byte-identical copies of val or test images: the
    student was distilled on them (its teacher's soft labels, no true labels), so the figures on
    those splits are no longer on unseen images."""
    if not unlabeled:
        return []
    extra = set(_fingerprints([s.path for s in unlabeled]).values())
    out = []
    for split in ("test", "val"):
        # The scan's digests of the labelled images; a file it did not read is read here.
        copies = sum((dataset.fingerprints.get(s.path) or file_digest(s.path)) in extra for s in dataset.splits.get(split, []))
        if copies:
            out.append(f"{copies} of the --unlabeled images are byte-identical copies of {split} images: distillation "
                       f"trained on them (without labels), so the {split} figures are not on unseen images; "
                       "remove them from one of the folders")
    return out


def scan_unlabeled(root: str | os.PathLike) -> tuple[list[Sample], list[SkippedFile]]:
    """Every decodable image below `root` (any depth, no class folders), with label -1.

    For distillation: the teacher labels these (e.g. photos from the deployment device's own
    camera), so they need no class. Unreadable files are returned as skipped, like scan_dataset.
    """
    given = Path(root).expanduser()
    if not given.is_dir():
        raise DataError(f"unlabelled image folder '{given}' does not exist or is not a folder")
    root = given.resolve()
    files = _files_below(root)
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        reasons = list(pool.map(_check_file, files))
    samples = [Sample(p, -1) for p, r in zip(files, reasons) if r is None]
    skipped = [SkippedFile(p.relative_to(root), r) for p, r in zip(files, reasons) if r is not None]
    if not samples:
        raise DataError(f"unlabelled image folder '{root}' holds no readable images ({len(files)} files checked)")
    return samples, skipped
