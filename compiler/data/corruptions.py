"""Camera corruptions of uint8 images: seeded, deterministic, vectorised NumPy.

A subset of ImageNet-C's kinds (Hendrycks and Dietterich, ICLR 2019) that a cheap camera
produces: sensor noise (gaussian, shot), soft optics (defocus) and a moving hand (motion blur),
exposure (brightness, contrast), white balance (colour cast), compression (JPEG) and low
resolution (pixelate). The PyPI package `imagecorruptions` breaks on NumPy 2 and its glass blur
takes 46 s per image, so these are written here: every kind works on a whole batch at once
(blurs as one FFT convolution of the batch), except JPEG and pixelate, which go through Pillow's
C codecs image by image (fractions of a millisecond each).

Severities 1..5 follow ImageNet-C's parameters where it has the kind; blur radii and pixelate
factors are given for 224 px and scaled with the image size, so a 32 px test image is degraded
as much as a photo. `corrupt(x, kind, severity, seed)` returns a new uint8 array of the same
shape; the same (kind, severity, seed) always gives the same bytes, and different kinds or
severities draw independent random numbers.
"""

from __future__ import annotations

import io

import numpy as np

SEVERITIES = (1, 2, 3, 4, 5)

# Per-severity parameters (index severity - 1).
_GAUSSIAN_SIGMA = (0.04, 0.06, 0.08, 0.09, 0.10)  # of the 0..1 range (ImageNet-C)
_SHOT_PHOTONS = (60, 25, 12, 5, 3)  # photons at full scale (ImageNet-C)
_DEFOCUS_RADIUS = (3, 4, 6, 8, 10)  # disk radius in px at 224 px (ImageNet-C)
_MOTION_LENGTH = (10, 15, 15, 15, 20)  # streak length in px at 224 px (ImageNet-C radius)
_BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)  # added to every channel, 0..1 range (ImageNet-C adds to V)
_CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)  # distance from the image mean kept (ImageNet-C)
_COLOUR_CAST = (0.08, 0.15, 0.22, 0.3, 0.4)  # red/blue gain shift (a wrong white balance)
_JPEG_QUALITY = (25, 18, 15, 10, 7)  # (ImageNet-C)
_PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)  # size factor of the low-resolution image (ImageNet-C)


def _check(images: np.ndarray) -> tuple[np.ndarray, bool]:
    x = np.asarray(images)
    if x.dtype != np.uint8:
        raise ValueError(f"corruptions take uint8 pixels, got {x.dtype}")
    single = x.ndim == 3
    if single:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"corruptions take [N, H, W, 3] or [H, W, 3] RGB images, got shape {x.shape}")
    return x, single


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Float pixels 0..255 back to uint8: rounded and clipped, never wrapped around."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _scaled(pixels_at_224: float, size: int) -> float:
    return pixels_at_224 * size / 224.0


# -- the kinds, each on a float32 batch [N, H, W, 3] in 0..255 with its own generator ---------


def gaussian_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive read noise; sigma as a fraction of the 0..255 range."""
    return x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(sigma * 255.0)


def shot_noise(x: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    """Photon (Poisson) noise: fewer photons at full scale is a darker scene amplified."""
    return rng.poisson(x * np.float32(photons / 255.0)).astype(np.float32) * np.float32(255.0 / photons)


def _convolve(x: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Each image convolved with its kernel (or one kernel for all), reflect-padded, by FFT.

    kernels: [k, k] or [N, k, k], odd k, summing to 1. One rfft2 over the whole batch.
    """
    n, h, w, _ = x.shape
    kernels = kernels if kernels.ndim == 3 else kernels[None]
    k = kernels.shape[-1]
    pad = k // 2
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect" if pad < min(h, w) else "edge")
    ph, pw = padded.shape[1:3]
    # scipy.fft keeps float32 as complex64 (numpy.fft would double every array).
    from scipy import fft

    spectrum = fft.rfft2(padded, axes=(1, 2), workers=-1)
    kernel_spectrum = fft.rfft2(kernels.astype(np.float32), s=(ph, pw), axes=(1, 2))[..., None]
    full = fft.irfft2(spectrum * kernel_spectrum, s=(ph, pw), axes=(1, 2), workers=-1)
    # The circular convolution puts output pixel (i, j) at (i + 2 pad, j + 2 pad).
    return full[:, 2 * pad : 2 * pad + h, 2 * pad : 2 * pad + w].astype(np.float32)


def disk_kernel(radius: float) -> np.ndarray:
    """A defocused lens: a uniform disk, anti-aliased by 4x supersampling of its edge."""
    r = max(radius, 0.5)
    half = int(np.ceil(r))
    sub = (np.arange(4 * (2 * half + 1)) + 0.5) / 4 - (half + 0.5)
    inside = (sub[:, None] ** 2 + sub[None, :] ** 2) <= r * r
    kernel = inside.reshape(2 * half + 1, 4, 2 * half + 1, 4).mean(axis=(1, 3))
    return (kernel / kernel.sum()).astype(np.float32)


def defocus_blur(x: np.ndarray, radius_at_224: float, rng: np.random.Generator) -> np.ndarray:
    return _convolve(x, disk_kernel(_scaled(radius_at_224, x.shape[1])))


def motion_kernels(length: float, angles: np.ndarray) -> np.ndarray:
    """Straight streaks of `length` px at each angle (radians): [N, k, k], each summing to 1."""
    half = max(1, int(np.ceil(length / 2)))
    size = 2 * half + 1
    t = np.linspace(-length / 2, length / 2, max(2, int(np.ceil(length)) * 4))
    kernels = np.zeros((len(angles), size, size), np.float32)
    rows = np.clip(np.rint(half - t[None, :] * np.sin(angles)[:, None]).astype(int), 0, size - 1)
    cols = np.clip(np.rint(half + t[None, :] * np.cos(angles)[:, None]).astype(int), 0, size - 1)
    images = np.repeat(np.arange(len(angles)), len(t))
    np.add.at(kernels, (images, rows.ravel(), cols.ravel()), 1.0)
    return kernels / kernels.sum(axis=(1, 2), keepdims=True)


def motion_blur(x: np.ndarray, length_at_224: float, rng: np.random.Generator) -> np.ndarray:
    """A hand moving during the exposure: a streak at a random direction per image."""
    angles = rng.uniform(0, np.pi, len(x))
    return _convolve(x, motion_kernels(_scaled(length_at_224, x.shape[1]), angles))


def brightness(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Over-exposure: `amount` of the full range added (negative darkens)."""
    return x + np.float32(amount * 255.0)


def contrast(x: np.ndarray, keep: float, rng: np.random.Generator) -> np.ndarray:
    """Flat light / haze: each image pulled towards its own mean, keeping `keep` of the spread."""
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return (x - mean) * np.float32(keep) + mean


def colour_cast(x: np.ndarray, shift: float, rng: np.random.Generator) -> np.ndarray:
    """A wrong white balance: red up and blue down (warm) or the reverse (cool), per image."""
    sign = rng.choice(np.array([-1.0, 1.0], np.float32), size=len(x))[:, None, None, None]
    gains = 1.0 + sign * np.array([shift, 0.0, -shift], np.float32)
    return x * gains


def jpeg(x: np.ndarray, quality: int, rng: np.random.Generator) -> np.ndarray:
    """JPEG compression at `quality`, each image through Pillow's encoder and decoder."""
    from PIL import Image

    src = _to_uint8(x)
    out = np.empty_like(src)
    for i, image in enumerate(src):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=int(quality))
        out[i] = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return out.astype(np.float32)


def pixelate(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """A low-resolution sensor upscaled: box-downsample to `factor` of the size, blocky upsample."""
    from PIL import Image

    src = _to_uint8(x)
    h, w = src.shape[1:3]
    small = (max(1, int(w * factor)), max(1, int(h * factor)))
    out = np.empty_like(src)
    for i, image in enumerate(src):
        low = Image.fromarray(image).resize(small, Image.Resampling.BOX)
        out[i] = np.asarray(low.resize((w, h), Image.Resampling.NEAREST))
    return out.astype(np.float32)


# name -> (function, per-severity parameters)
CORRUPTIONS = {
    "gaussian_noise": (gaussian_noise, _GAUSSIAN_SIGMA),
    "shot_noise": (shot_noise, _SHOT_PHOTONS),
    "defocus_blur": (defocus_blur, _DEFOCUS_RADIUS),
    "motion_blur": (motion_blur, _MOTION_LENGTH),
    "brightness": (brightness, _BRIGHTNESS),
    "contrast": (contrast, _CONTRAST),
    "colour_cast": (colour_cast, _COLOUR_CAST),
    "jpeg": (jpeg, _JPEG_QUALITY),
    "pixelate": (pixelate, _PIXELATE),
}


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *keys])


def corrupt(images: np.ndarray, kind: str, severity: int, seed: int = 0) -> np.ndarray:
    """`images` (uint8, [N, H, W, 3] or [H, W, 3]) with corruption `kind` at `severity` 1..5.

    Deterministic: the generator is seeded by (seed, kind, severity), so each call with the same
    arguments returns the same bytes and no two kinds share random numbers.
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; one of {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    x, single = _check(images)
    function, parameters = CORRUPTIONS[kind]
    rng = _rng(seed, list(CORRUPTIONS).index(kind), severity)
    out = _to_uint8(function(x.astype(np.float32), parameters[severity - 1], rng))
    return out[0] if single else out


def describe_steps(steps) -> str:
    """A chain of corruption steps in words, e.g. "motion_blur 12, jpeg 20" (reports, logs)."""
    return ", ".join(f"{kind} {float(parameter):g}" for kind, parameter in steps)


def apply_steps(images: np.ndarray, steps, seed: int = 0) -> np.ndarray:
    """A chain of corruptions with explicit parameters: [(kind, parameter), ...], in order.

    What a simulated camera is made of (benchmarks/domain_shift.py): e.g. soft optics, then a
    colour cast, then sensor noise, then JPEG. Rounded to uint8 between steps, as a real
    pipeline stores bytes; step i draws from its own generator (seed, 100 + i).
    """
    x, single = _check(images)
    for i, (kind, parameter) in enumerate(steps):
        if kind not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {kind!r}; one of {', '.join(CORRUPTIONS)}")
        x = _to_uint8(CORRUPTIONS[kind][0](x.astype(np.float32), parameter, _rng(seed, 100 + i)))
    return x[0] if single else x
