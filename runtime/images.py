"""How an image file becomes model input: the deployment contract's host side.

Decoding is deliberately forgiving about *formats* (palette, CMYK, 16-bit, alpha, EXIF
orientation all become plain 8-bit RGB) and strict about *data* (a truncated file is refused,
never half-used). The compile (compiler/data/datasets), `edgetl predict` and `edgetl bench` all load
images through `load_image`, and the export's metadata describes it (`RESIZE_POLICY`), so a
deployed app that follows the policy feeds the model what it was checked on.

This module must stay free of TensorFlow: `edgetl predict` imports it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgetl.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "MAX_IMAGE_PIXELS", "RESIZE_POLICY", "check_size", "decode_failure_reason", "decode_rgb", "files_below", "images_in", "list_folder", "load_image"]

# The file names read as images where a folder may also hold other files: loose files beside a
# dataset's class folders, and a folder given to `predict`.
IMAGE_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
})


def list_folder(folder: Path) -> tuple[list[str], list[str]]:
    """Non-hidden subfolder and file names in `folder`, sorted (listing order must not matter).
    A hidden name starts with a dot (.DS_Store, .git)."""
    dirs, files = [], []
    for entry in os.scandir(folder):
        if entry.name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir()  # follows symlinks: a linked class folder is a class folder
        except OSError:
            is_dir = False
        (dirs if is_dir else files).append(entry.name)
    return sorted(dirs), sorted(files)


def files_below(folder: Path, unreadable: list[tuple[Path, OSError]] | None = None) -> list[Path]:
    """All non-hidden files below `folder` (any depth, linked folders too), sorted; symlink loops
    are cut. Folders that cannot be listed are left out, and appended to `unreadable` when given."""
    out: list[Path] = []
    seen: set[str] = set()

    def walk(d: Path) -> None:
        real = os.path.realpath(d)
        if real in seen:
            return
        seen.add(real)
        try:
            dirs, files = list_folder(d)
        except OSError as exc:
            if unreadable is not None:
                unreadable.append((d, exc))
            return  # an unreadable subfolder: nothing we can list or report per file
        out.extend(d / f for f in files)
        for sub in dirs:
            walk(d / sub)

    walk(Path(folder))
    return sorted(out)


def images_in(folder: Path, unreadable: list[tuple[Path, OSError]] | None = None) -> list[Path]:
    """The image files (by name suffix) among `files_below(folder)`: what `predict` reads of a folder."""
    return [path for path in files_below(folder, unreadable) if path.suffix.lower() in IMAGE_SUFFIXES]


# What a deployed app has to do to an image before feeding it to an exported model. It is
# written into the export's metadata, so it must describe `load_image` exactly.
RESIZE_POLICY = (
    "Decode with EXIF orientation applied; convert to 8-bit RGB (alpha composited onto "
    "white, 16-bit values scaled by 255/65535, 0-1 floats by 255, palette/grayscale/CMYK "
    "converted); resize the whole image to SIZE x SIZE with bilinear interpolation "
    "(Pillow BILINEAR, which is antialiased when shrinking), stretching it: no crop, no "
    "padding, aspect ratio not kept. Pixel values stay 0-255 uint8 in RGB order. JPEGs at "
    "least 4x larger than SIZE on both sides are first decoded at a reduced 1/2, 1/4 or 1/8 "
    "scale by libjpeg (Pillow Image.draft), keeping at least 2x SIZE before the bilinear "
    "resize."
)


def _scale_high_bit_depth(im: Image.Image) -> Image.Image:
    """Map a single-channel 16/32-bit integer or float image to 8-bit grayscale ("L").

    Pillow's own convert("L") clips such values at 255, which turns almost any 16-bit photo
    white; we scale instead.
    """
    arr = np.asarray(im).astype(np.float64)
    arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if im.mode.startswith("I;16"):
        scaled = arr * (255.0 / 65535.0)
    elif im.mode == "I":
        # Mode "I" is Pillow's container for 16-bit data from many formats, so the 16-bit
        # range is the honest reading; only data outside it (true 32-bit) is stretched.
        if lo >= 0 and hi <= 65535:
            scaled = arr * (255.0 / 65535.0)
        else:
            scaled = _stretch(arr, lo, hi)
    else:  # "F": floats are conventionally 0-1; otherwise accept 8/16-bit ranges as such.
        if lo >= 0 and hi <= 1.0:
            scaled = arr * 255.0
        elif lo >= 0 and hi <= 255.0:
            scaled = arr
        elif lo >= 0 and hi <= 65535.0:
            scaled = arr * (255.0 / 65535.0)
        else:
            scaled = _stretch(arr, lo, hi)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))  # 2-D uint8 -> "L"


def _stretch(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros_like(arr)
    return (arr - lo) * (255.0 / (hi - lo))


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, compositing transparency onto white."""
    mode = im.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _scale_high_bit_depth(im).convert("RGB")
    if im.has_transparency_data:
        # Covers RGBA/LA/PA/premultiplied modes and P/L/RGB with a tRNS transparency key.
        # Transparent pixels often hold black (or garbage) colour; white is what viewers show.
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "RGB":
        return im
    return im.convert("RGB")


# Decompression-bomb limit: a few kB of PNG can declare gigapixels. Pillow refuses images over
# 2 x Image.MAX_IMAGE_PIXELS (179 Mpx by default) on open, but that is a global any library may
# switch off (None), so edgetl checks its own limit, Pillow's default, before decoding.
MAX_IMAGE_PIXELS = 2 * 89_478_485


def decode_rgb(path: Path, target: int | None = None) -> Image.Image:
    """Fully decode `path` into an 8-bit RGB image, upright per its EXIF orientation.

    `target` (the final square size) lets large JPEGs be decoded at reduced scale.
    Raises whatever Pillow raises on bad data; callers turn that into a reason.
    """
    if os.stat(path).st_size == 0:
        raise EmptyFileError(path)
    # Pillow warns (on stderr, with its source line) above 89 Mpx; edgetl's own limit, checked
    # below, is the one that decides, so the warning would only be noise before the answer.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(path)
    with im:
        if im.width * im.height > MAX_IMAGE_PIXELS:  # from the header: nothing decoded yet
            raise Image.DecompressionBombError(
                f"{im.width}x{im.height} = {im.width * im.height} pixels, over the limit of {MAX_IMAGE_PIXELS}"
            )
        if target is not None and im.format == "JPEG":
            # Ask for >= 2x the target so the bilinear resize still has real pixels to
            # average: the result stays close to a full-resolution decode + resize.
            im.draft(None, (2 * target, 2 * target))
        im.load()  # full decode: this is what catches truncated/corrupt data
        try:
            ImageOps.exif_transpose(im, in_place=True)
        except Exception:  # noqa: BLE001 - a malformed EXIF block must not cost the photo
            pass
        return _to_rgb(im)


class EmptyFileError(ValueError):
    """A file of 0 bytes: named as such, not as an unrecognised format (the compile's data check
    and predict say the same thing)."""


def decode_failure_reason(exc: BaseException) -> str:
    """A one-line, human reason for a decode failure."""
    msg = " ".join(str(exc).split())  # one line, whatever the exception text
    if isinstance(exc, EmptyFileError):
        return "empty file (0 bytes)"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image (format not recognised)"
    if isinstance(exc, PermissionError):
        return "unreadable: permission denied"
    if isinstance(exc, FileNotFoundError):
        if exc.filename and os.path.islink(exc.filename):
            return "unreadable: a link to a file that does not exist"
        return "unreadable: file not found"
    if isinstance(exc, Image.DecompressionBombError):
        return f"image too large to decode safely: {msg}"
    if "truncated" in msg.lower():
        return f"truncated image data: {msg}"
    return f"corrupt or unsupported image ({type(exc).__name__}: {msg})"


def check_size(size: int) -> int:
    # A programming error, not a data problem: callers pass the model's input size.
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    return int(size)


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode one image and resize it per `RESIZE_POLICY`: uint8 array [size, size, 3], RGB.

    Raises DataError when the file cannot be read as an image.
    """
    size = check_size(size)
    path = Path(path)
    try:
        img = decode_rgb(path, target=size)
    except Exception as exc:  # noqa: BLE001 - reported to the user as a data problem
        raise DataError(
            f"cannot read image '{path}': {decode_failure_reason(exc)}; pass a readable image file"
        ) from exc
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)
