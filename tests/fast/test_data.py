"""Tests for edgetl.compiler.data.datasets: layouts, splits, bad files, odd image modes, errors.

All images are tiny and generated in tmp_path, so the whole file runs in a few seconds.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.compiler.data import datasets as data
from edgetl.compiler.data.datasets import (
    RESIZE_POLICY,
    load_image,
    load_images,
    scan_dataset,
)
from edgetl.errors import DataError

PALETTE = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]


def save_rgb(path: Path, color=(200, 30, 30), size=(16, 16), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def make_class_folders(root: Path, counts: dict[str, int], ext: str = ".png") -> Path:
    """root/<class>/img_NNN<ext>, one solid colour per class; one corner pixel numbers the image,
    so no two files are byte-identical copies (which the scan warns about)."""
    for i, (cls, n) in enumerate(sorted(counts.items())):
        for j in range(n):
            path = root / cls / f"img_{j:03d}{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            img = Image.new("RGB", (16, 16), PALETTE[i % len(PALETTE)])
            img.putpixel((0, 0), (j % 256, j // 256, i % 256))
            img.save(path)
    return root


def names(samples) -> list[str]:
    return sorted(s.path.name + "@" + s.path.parent.name for s in samples)


def pixel(arr: np.ndarray, y: int | None = None, x: int | None = None) -> np.ndarray:
    h, w = arr.shape[:2]
    return arr[h // 2 if y is None else y, w // 2 if x is None else x].astype(int)


# ----------------------------------------------------------------------------------------
# Layouts and splits
# ----------------------------------------------------------------------------------------


def test_class_folders_layout_is_split_stratified(tmp_path):
    root = make_class_folders(tmp_path / "d", {"cat": 20, "dog": 20, "ant": 20})
    ds = scan_dataset(root)

    assert ds.layout == "class-folders"
    assert ds.classes == ["ant", "cat", "dog"]  # sorted folder names
    assert ds.root == root.resolve()
    counts = ds.counts()
    for cls in ds.classes:
        assert counts["val"][cls] == 3  # round(20 * 0.15)
        assert counts["test"][cls] == 3
        assert counts["train"][cls] == 14
    # Labels index into classes, and each sample's folder is its class.
    for split in data.SPLITS:
        for s in ds.splits[split]:
            assert ds.classes[s.label] == s.path.parent.name
            assert s.path.is_absolute()
    # No image appears in two splits, none is lost.
    all_paths = [s.path for split in data.SPLITS for s in ds.splits[split]]
    assert len(all_paths) == len(set(all_paths)) == 60
    assert ds.skipped == []
    # 3 images per class in a carved split is legal but worth a warning (for val and test).
    assert [w.split(" split")[0] for w in ds.warnings] == ["carved val", "carved test"]
    assert ds.carved == {"val": 0.15, "test": 0.15}

    report = json.loads(json.dumps(ds.to_report()))
    assert report["layout"] == "class-folders"
    assert report["counts"]["train"]["cat"] == 14
    assert report["carved"]["val"] == {
        "from": "all images", "fraction": 0.15, "seed": 0, "stratified": True,
    }
    assert report["resize_policy"] == RESIZE_POLICY


def test_stratified_proportions_follow_fractions(tmp_path):
    root = make_class_folders(tmp_path / "d", {"a": 100, "b": 40})
    ds = scan_dataset(root, val_fraction=0.2, test_fraction=0.1)
    c = ds.counts()
    assert (c["val"]["a"], c["test"]["a"], c["train"]["a"]) == (20, 10, 70)
    assert (c["val"]["b"], c["test"]["b"], c["train"]["b"]) == (8, 4, 28)


def test_splits_layout_carves_missing_val_from_train(tmp_path):
    root = tmp_path / "d"
    make_class_folders(root / "train", {"a": 20, "b": 20})
    make_class_folders(root / "test", {"a": 4, "b": 4})
    ds = scan_dataset(root, seed=3)

    assert ds.layout == "splits"
    assert ds.carved == {"val": 0.15}
    c = ds.counts()
    assert c["test"] == {"a": 4, "b": 4}  # given split kept as is
    assert c["val"] == {"a": 3, "b": 3}
    assert c["train"] == {"a": 17, "b": 17}
    # val comes out of train/, test/ is untouched.
    assert all(s.path.parent.parent.name == "train" for s in ds.splits["val"])
    assert all(s.path.parent.parent.name == "test" for s in ds.splits["test"])
    assert not set(ds.splits["val"]) & set(ds.splits["train"])
    report = ds.to_report()
    assert report["carved"] == {
        "val": {"from": "train", "fraction": 0.15, "seed": 3, "stratified": True},
    }


def test_cv_threshold_counts_what_training_and_choosing_would_share(tmp_path):
    """--cv-below compares the labelled images left for training and choosing: a test split that
    the held-out way would carve is not among them, a given test/ never was."""
    flat = make_class_folders(tmp_path / "flat", {"a": 20, "b": 20})  # held-out would carve 3 + 3 for test
    assert scan_dataset(flat, selection="auto", cv_below=35).selection == "cv"  # 34 < 35
    held = scan_dataset(flat, selection="auto", cv_below=34)
    assert held.selection == "holdout" and held.counts()["test"] == {"a": 3, "b": 3}
    cv = scan_dataset(flat, selection="auto", cv_below=35)
    assert cv.carved == {} and len(cv.splits["train"]) == 40  # nothing held back

    given = tmp_path / "given"
    make_class_folders(given / "train", {"a": 20, "b": 20})
    make_class_folders(given / "test", {"a": 4, "b": 4})
    assert scan_dataset(given, selection="auto", cv_below=35).selection == "holdout"  # 40: test/ is not carved
    assert scan_dataset(given, selection="auto", cv_below=41).selection == "cv"

    only_train = tmp_path / "only_train"
    make_class_folders(only_train / "train", {"a": 20, "b": 20})
    assert scan_dataset(only_train, selection="auto", cv_below=35).selection == "cv"  # 40 - 6 carved for test


def test_byte_identical_copies_are_named(tmp_path):
    root = make_class_folders(tmp_path / "d", {"a": 20, "b": 20})
    ds = scan_dataset(root)
    assert not [w for w in ds.warnings if "byte-identical" in w]
    # A training image copied into test, one copied within train, one under the other class.
    test_img, train_img = ds.splits["test"][0].path, ds.splits["train"][0].path
    test_img.write_bytes(train_img.read_bytes())
    train_a = [s.path for s in ds.splits["train"] if s.path.parent.name == "a"]
    train_a[2].write_bytes(train_a[1].read_bytes())
    (root / "b" / "copy_of_a.png").write_bytes(train_a[3].read_bytes())
    assert ds.copies_of_training("test") == 0
    again = scan_dataset(root)
    warnings = [w for w in again.warnings if "byte-identical" in w]
    assert any(w.startswith("1 image(s) appear under two classes") for w in warnings), warnings
    assert any(w.startswith("1 test image(s) are byte-identical copies of training images") for w in warnings), warnings
    # The report counts them too, so that no sentence calls the test split unseen (facts.how_measured).
    assert again.copies_of_training("test") == again.to_report()["test_copies_of_train"] == 1
    # The copy within train is named once; the cross-class copy only as the label conflict.
    within = [w for w in warnings if w.split(" ", 1)[1].startswith("training image(s) are byte-identical copies of other")]
    assert len(within) == 1 and within[0].startswith("1 training image(s)") and "copy_of_a" not in within[0], warnings


def test_unlabeled_copies_of_test_images_are_named(tmp_path):
    from edgetl.compiler.data.datasets import scan_unlabeled, unlabeled_overlap_warnings

    root = make_class_folders(tmp_path / "d", {"a": 20, "b": 20})
    ds = scan_dataset(root)
    device = tmp_path / "device"
    device.mkdir()
    for i, sample in enumerate(ds.splits["train"][:3]):  # copies of training images: no warning
        (device / f"t{i}.png").write_bytes(sample.path.read_bytes())
    assert unlabeled_overlap_warnings(scan_unlabeled(device)[0], ds) == []
    for i, sample in enumerate(ds.splits["test"][:2]):
        (device / f"x{i}.png").write_bytes(sample.path.read_bytes())
    (warning,) = unlabeled_overlap_warnings(scan_unlabeled(device)[0], ds)
    assert warning.startswith("2 of the --unlabeled images are byte-identical copies of test images")


def test_splits_layout_all_given_and_both_carved(tmp_path):
    root = tmp_path / "given"
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        make_class_folders(root / split, {"a": n, "b": n})
    ds = scan_dataset(root)
    assert ds.carved == {}
    assert ds.counts() == {"train": {"a": 6, "b": 6}, "val": {"a": 2, "b": 2},
                           "test": {"a": 2, "b": 2}}

    only_train = tmp_path / "only_train"
    make_class_folders(only_train / "train", {"a": 40, "b": 40})
    ds = scan_dataset(only_train)
    assert ds.carved == {"val": 0.15, "test": 0.15}
    assert ds.counts()["val"] == {"a": 6, "b": 6}
    assert ds.counts()["test"] == {"a": 6, "b": 6}


def test_tiny_class_still_gets_one_image_per_split(tmp_path):
    root = make_class_folders(tmp_path / "d", {"a": 3, "b": 30})
    c = scan_dataset(root).counts()
    assert (c["train"]["a"], c["val"]["a"], c["test"]["a"]) == (1, 1, 1)


def test_split_determinism(tmp_path, monkeypatch):
    root = make_class_folders(tmp_path / "d", {"a": 30, "b": 30})
    first = scan_dataset(root, seed=7)
    again = scan_dataset(root, seed=7)
    other = scan_dataset(root, seed=8)
    for split in data.SPLITS:
        assert first.splits[split] == again.splits[split]
    assert names(first.splits["val"]) != names(other.splits["val"])

    # The filesystem's listing order must not matter: list every folder backwards.
    real_scandir = os.scandir
    monkeypatch.setattr(data.os, "scandir", lambda p: list(real_scandir(p))[::-1])
    reversed_listing = scan_dataset(root, seed=7)
    for split in data.SPLITS:
        assert reversed_listing.splits[split] == first.splits[split]


def test_hidden_ignored_and_nested_folders_included(tmp_path):
    root = make_class_folders(tmp_path / "d", {"a": 10, "b": 10})
    (root / ".DS_Store").write_bytes(b"\0junk")
    (root / "a" / ".DS_Store").write_bytes(b"\0junk")
    save_rgb(root / ".cache" / "x.png")  # hidden folder at the top: not a class
    save_rgb(root / "a" / ".thumbs" / "t.png")  # hidden folder inside a class
    save_rgb(root / "a" / "deeper" / "more" / "n1.png")
    save_rgb(root / "a" / "deeper" / "n2.png")
    (root / "README.md").write_text("not a class")

    ds = scan_dataset(root)
    assert ds.classes == ["a", "b"]
    assert ds.skipped == []
    assert sum(ds.counts()[s]["a"] for s in data.SPLITS) == 12
    used = {s.path.name for split in data.SPLITS for s in ds.splits[split]}
    assert {"n1.png", "n2.png"} <= used and "t.png" not in used


def test_loose_images_outside_classes_warn(tmp_path):
    root = make_class_folders(tmp_path / "d", {"a": 10, "b": 10})
    save_rgb(root / "stray.jpg")
    ds = scan_dataset(root)
    assert any("stray.jpg" in w for w in ds.warnings)


def test_scan_progress_counts_every_file(tmp_path):
    root = make_class_folders(tmp_path / "d", {"a": 5, "b": 6})
    (root / "a" / "notes.txt").write_text("hi")
    calls = []
    scan_dataset(root, val_fraction=0.2, test_fraction=0.2, progress=calls.append)
    assert sum(calls) == 12


# ----------------------------------------------------------------------------------------
# Bad files
# ----------------------------------------------------------------------------------------


def test_bad_files_are_skipped_with_reasons(tmp_path):
    root = make_class_folders(tmp_path / "d", {"a": 10, "b": 10}, ext=".jpg")
    bad = root / "a"
    # A real JPEG cut in half: the header parses, the pixel data ends early.
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG", quality=95)
    (bad / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (bad / "fake.jpg").write_text("this is text, not a JPEG\n")
    (bad / "notes.txt").write_text("labelling notes\n")
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "dangling.jpg").symlink_to(tmp_path / "does-not-exist.jpg")
    # An RGBA PNG: valid, must be used (composited onto white).
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 128
    Image.fromarray(rgba, mode="RGBA").save(bad / "alpha.png")

    ds = scan_dataset(root)
    reasons = {s.path.as_posix(): s.reason for s in ds.skipped}
    assert set(reasons) == {"a/truncated.jpg", "a/fake.jpg", "a/notes.txt", "a/empty.jpg",
                            "a/dangling.jpg"}
    assert "truncated" in reasons["a/truncated.jpg"]
    assert "not an image" in reasons["a/fake.jpg"]
    assert "not an image" in reasons["a/notes.txt"]
    assert "empty" in reasons["a/empty.jpg"]
    assert "unreadable" in reasons["a/dangling.jpg"]
    assert all("\n" not in r for r in reasons.values())

    used = {s.path.name for split in data.SPLITS for s in ds.splits[split]}
    assert "alpha.png" in used
    assert not used & {"truncated.jpg", "fake.jpg", "notes.txt", "empty.jpg", "dangling.jpg"}
    assert sum(ds.counts()[s]["a"] for s in data.SPLITS) == 11
    report = ds.to_report()
    assert {"path": "a/empty.jpg", "reason": reasons["a/empty.jpg"]} in report["skipped"]

    with pytest.raises(DataError, match="truncated.jpg"):
        load_image(bad / "truncated.jpg", 16)


# ----------------------------------------------------------------------------------------
# Decoding of odd modes
# ----------------------------------------------------------------------------------------


def _palette_image(transparent: bool) -> Image.Image:
    im = Image.new("P", (16, 16), 1)
    im.putpalette([0, 0, 0, 10, 20, 250] + [0] * (254 * 3))
    im.paste(0, (0, 0, 8, 16))  # left half: index 0 (black, or transparent)
    if transparent:
        im.info["transparency"] = 0
    return im


def _write(path: Path, im: Image.Image, **kw) -> Path:
    im.save(path, **kw)
    return path


MODE_CASES = {
    # name: (builder(tmp_path) -> path, {(y, x): expected RGB})
    "L": (lambda d: _write(d / "l.png", Image.new("L", (16, 16), 100)),
          {(8, 8): (100, 100, 100)}),
    "1": (lambda d: _write(d / "one.png", Image.new("1", (16, 16), 1)),
          {(8, 8): (255, 255, 255)}),
    "P": (lambda d: _write(d / "p.png", _palette_image(False)),
          {(8, 2): (0, 0, 0), (8, 13): (10, 20, 250)}),
    "P+transparency": (lambda d: _write(d / "pt.png", _palette_image(True), transparency=0),
                       {(8, 2): (255, 255, 255), (8, 13): (10, 20, 250)}),
    "P+transparency GIF": (lambda d: _write(d / "pt.gif", _palette_image(True), transparency=0),
                           {(8, 2): (255, 255, 255), (8, 13): (10, 20, 250)}),
    "CMYK JPEG": (lambda d: _write(d / "cmyk.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0)),
                                   quality=95),
                  {(8, 8): (255, 0, 0)}),
    "LA": (lambda d: _write(d / "la.png", Image.new("LA", (16, 16), (0, 128))),
           {(8, 8): (127, 127, 127)}),
    "RGBA": (lambda d: _write(d / "rgba.png", Image.new("RGBA", (16, 16), (255, 0, 0, 128))),
             {(8, 8): (255, 127, 127)}),
    "RGBA transparent": (lambda d: _write(d / "clear.png", Image.new("RGBA", (16, 16),
                                                                     (0, 0, 0, 0))),
                         {(8, 8): (255, 255, 255)}),
    "I;16 PNG": (lambda d: _write(d / "g16.png", _gray16_stripes()),
                 {(8, 2): (0, 0, 0), (8, 7): (128, 128, 128), (8, 13): (255, 255, 255)}),
    "I;16B TIFF": (lambda d: _write(d / "g16b.tif", Image.new("I;16B", (16, 16), 32768)),
                   {(8, 8): (128, 128, 128)}),
    "I TIFF": (lambda d: _write(d / "gi.tif", Image.new("I", (16, 16), 65535)),
               {(8, 8): (255, 255, 255)}),
    "F TIFF": (lambda d: _write(d / "f.tif", Image.new("F", (16, 16), 0.5)),
               {(8, 8): (128, 128, 128)}),
}


def _gray16_stripes() -> Image.Image:
    a = np.zeros((16, 16), dtype=np.uint16)
    a[:, 5:10] = 32768
    a[:, 10:] = 65535
    im = Image.fromarray(a)
    assert im.mode == "I;16"
    return im


@pytest.mark.parametrize("case", sorted(MODE_CASES))
def test_odd_modes_load_as_rgb(tmp_path, case):
    build, expected = MODE_CASES[case]
    path = build(tmp_path)
    assert data._check_file(path) is None
    arr = load_image(path, 16)
    assert arr.dtype == np.uint8 and arr.shape == (16, 16, 3)
    tol = 12 if path.suffix == ".jpg" else 2
    for (y, x), rgb in expected.items():
        got = pixel(arr, y, x)
        assert np.abs(got - np.array(rgb)).max() <= tol, (case, (y, x), got.tolist(), rgb)


def test_exif_orientation_is_applied(tmp_path):
    # Stored 32 wide x 16 tall: left half red, right half blue. Orientation 6 means
    # "rotate 90 degrees clockwise to display", which brings the left half to the top.
    im = Image.new("RGB", (32, 16), (255, 0, 0))
    im.paste((0, 0, 255), (16, 0, 32, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    im.save(path, quality=95, exif=exif)

    arr = load_image(path, 16)
    top, bottom = pixel(arr, 3, 8), pixel(arr, 12, 8)
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


# ----------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------


def test_load_images_shapes_labels_progress(tmp_path):
    root = make_class_folders(tmp_path / "d", {"a": 10, "b": 10})
    ds = scan_dataset(root)
    calls = []
    x, y = load_images(ds.splits["train"], 8, progress=calls.append)
    assert x.shape == (len(ds.splits["train"]), 8, 8, 3) and x.dtype == np.uint8
    assert y.dtype == np.int64 and y.tolist() == [s.label for s in ds.splits["train"]]
    assert sum(calls) == len(ds.splits["train"])
    # Each row is its own image: class colour survives the resize.
    for img, label in zip(x, y):
        assert np.abs(pixel(img) - np.array(PALETTE[label])).max() <= 2

    empty_x, empty_y = load_images([], 8)
    assert empty_x.shape == (0, 8, 8, 3) and empty_y.shape == (0,)


def test_resize_stretches_without_crop(tmp_path):
    # 48x16 with red | green | blue thirds: a centre crop would keep only green.
    im = Image.new("RGB", (48, 16), (255, 0, 0))
    im.paste((0, 255, 0), (16, 0, 32, 16))
    im.paste((0, 0, 255), (32, 0, 48, 16))
    arr = load_image(_write(tmp_path / "wide.png", im), 12)
    assert arr.shape == (12, 12, 3)
    assert pixel(arr, 6, 1).tolist() == [255, 0, 0]
    assert pixel(arr, 6, 6)[1] == 255
    assert pixel(arr, 6, 10).tolist() == [0, 0, 255]
    assert "BILINEAR" in RESIZE_POLICY and "no crop" in RESIZE_POLICY


def test_large_jpeg_uses_reduced_decode_and_keeps_colour(tmp_path):
    path = save_rgb(tmp_path / "big.jpg", (20, 120, 220), size=(640, 480))
    arr = load_image(path, 32)
    assert arr.shape == (32, 32, 3)
    assert np.abs(pixel(arr) - np.array([20, 120, 220])).max() <= 6


def test_load_image_errors(tmp_path):
    with pytest.raises(DataError, match=r"nope.jpg': unreadable: file not found; "):
        load_image(tmp_path / "nope.jpg", 16)
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(DataError, match="a link to a file that does not exist"):
        load_image(tmp_path / "dangling.jpg", 16)
    txt = tmp_path / "x.txt"
    txt.write_text("hello")
    with pytest.raises(DataError, match="x.txt"):
        load_image(txt, 16)
    with pytest.raises(ValueError):
        load_image(txt, 0)
    # An empty file is named as the compile's data check names it (predict said "not an image").
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.jpg': empty file \(0 bytes\)"):
        load_image(tmp_path / "empty.jpg", 16)


# ----------------------------------------------------------------------------------------
# Errors and warnings
# ----------------------------------------------------------------------------------------


def test_error_missing_root_and_file_root(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan_dataset(tmp_path / "missing")
    f = tmp_path / "file.zip"
    f.write_bytes(b"PK")
    with pytest.raises(DataError, match="file.zip.*not a folder"):
        scan_dataset(f)


def test_error_no_class_folders(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    save_rgb(root / "loose.png")
    with pytest.raises(DataError, match="no class folders"):
        scan_dataset(root)


def test_error_single_class(tmp_path):
    root = make_class_folders(tmp_path / "d", {"only": 10})
    with pytest.raises(DataError, match="'only'.*at least two classes"):
        scan_dataset(root)


@pytest.mark.parametrize("name", ["new\nline", "tab\there", "   "])
def test_error_class_name_that_cannot_be_a_label(tmp_path, name):
    # Each class name is a line of labels.txt: found by a newcomer, such a name failed only at export.
    root = make_class_folders(tmp_path / "d", {"a": 3, name: 3})
    with pytest.raises(DataError, match=re.escape(f"class folder name {name!r} cannot be a label")):
        scan_dataset(root)
    make_class_folders(tmp_path / "ok", {"a": 3, "tiger lily é": 3})
    assert scan_dataset(tmp_path / "ok").classes == ["a", "tiger lily é"]


def test_error_class_without_usable_images(tmp_path):
    root = make_class_folders(tmp_path / "d", {"a": 10, "b": 10})
    (root / "broken").mkdir()
    (root / "broken" / "x.jpg").write_text("nope")
    (root / "broken" / "y.txt").write_text("nope")
    with pytest.raises(DataError, match=r"'broken'.*all 2 file\(s\).*skipped"):
        scan_dataset(root)

    (root / "broken" / "x.jpg").unlink()
    (root / "broken" / "y.txt").unlink()
    with pytest.raises(DataError, match="'broken'.*empty"):
        scan_dataset(root)


def test_error_class_missing_between_splits(tmp_path):
    root = tmp_path / "d"
    make_class_folders(root / "train", {"a": 10, "b": 10, "c": 10})
    make_class_folders(root / "test", {"a": 3, "b": 3})
    with pytest.raises(DataError, match="'c'.*missing from test/"):
        scan_dataset(root)

    save_rgb(root / "test" / "c" / "x.png")
    save_rgb(root / "test" / "zebra" / "x.png")
    with pytest.raises(DataError, match="'zebra'.*in test/ but not in train/"):
        scan_dataset(root)


def test_error_class_empty_in_given_split(tmp_path):
    root = tmp_path / "d"
    make_class_folders(root / "train", {"a": 10, "b": 10})
    make_class_folders(root / "val", {"a": 3})
    (root / "val" / "b").mkdir()
    with pytest.raises(DataError, match="'val/b'"):
        scan_dataset(root)


def test_error_class_too_small_to_split(tmp_path):
    root = make_class_folders(tmp_path / "d", {"big": 20, "tiny": 2})
    with pytest.raises(DataError, match=r"'tiny' has 2 usable image\(s\).*minimum 3"):
        scan_dataset(root)
    # Carving only val out of train needs 2.
    root = tmp_path / "s"
    make_class_folders(root / "train", {"big": 20, "tiny": 1})
    make_class_folders(root / "test", {"big": 2, "tiny": 2})
    with pytest.raises(DataError, match=r"'tiny' has 1 usable image\(s\) in train/tiny.*minimum 2"):
        scan_dataset(root)


def test_error_class_too_small_to_cross_validate(tmp_path):
    # Found by a newcomer: a 1-image class was accepted, scored wrong out of fold every time.
    root = make_class_folders(tmp_path / "d", {"big": 10, "tiny": 1})
    with pytest.raises(DataError, match=r"'tiny' has 1 usable image\(s\) in its folder, too few for cross-validation \(minimum 2"):
        scan_dataset(root, selection="cv")
    root = tmp_path / "s"
    make_class_folders(root / "train", {"big": 10, "tiny": 1})
    with pytest.raises(DataError, match="'tiny' has 1 usable image.s. in train/tiny, too few for cross-validation"):
        scan_dataset(root, selection="cv")
    make_class_folders(root / "val", {"big": 2, "tiny": 1})  # a given val/ joins train/ under cross-validation
    assert len(scan_dataset(root, selection="cv").splits["train"]) == 14


def test_error_mixed_layout(tmp_path):
    root = tmp_path / "d"
    make_class_folders(root / "train", {"a": 5, "b": 5})
    save_rgb(root / "daisy" / "x.png")
    with pytest.raises(DataError, match="mixes split folders.*'daisy'"):
        scan_dataset(root)


def test_error_split_alias_and_missing_train(tmp_path):
    root = tmp_path / "d"
    make_class_folders(root / "train", {"a": 5, "b": 5})
    make_class_folders(root / "validation", {"a": 2, "b": 2})
    with pytest.raises(DataError, match="'validation' should be named 'val'"):
        scan_dataset(root)

    root = tmp_path / "e"
    make_class_folders(root / "val", {"a": 5, "b": 5})
    make_class_folders(root / "test", {"a": 5, "b": 5})
    with pytest.raises(DataError, match="no 'train' folder"):
        scan_dataset(root)


def test_error_bad_fractions(tmp_path):
    root = make_class_folders(tmp_path / "d", {"a": 5, "b": 5})
    with pytest.raises(DataError, match="val_fraction"):
        scan_dataset(root, val_fraction=1.5)
    with pytest.raises(DataError, match="below 1"):
        scan_dataset(root, val_fraction=0.5, test_fraction=0.5)


def test_warnings_imbalance_and_thin_carved_split(tmp_path):
    root = make_class_folders(tmp_path / "d", {"many": 60, "few": 10})
    ds = scan_dataset(root)
    imbalance = [w for w in ds.warnings if "imbalance" in w]
    assert len(imbalance) == 1 and "'many'" in imbalance[0] and "'few'" in imbalance[0]
    thin = [w for w in ds.warnings if "carved val" in w]
    assert len(thin) == 1 and "'few'" in thin[0] and "'many'" not in thin[0]

    balanced = make_class_folders(tmp_path / "e", {"a": 40, "b": 40})
    assert scan_dataset(balanced).warnings == []
