"""`--adapt camera`: fit a simulated camera to the device's unlabelled images, then train through it.

The deployment camera differs from the training photos mostly by what a camera does to every
picture: soft optics or a moving hand (blur), exposure and contrast, white balance, sensor noise
and JPEG. Those are compiler/data/corruptions.py's kinds, so a camera is a chain of them
(`CameraSteps`), applied in the order light goes through a camera.

1. `fit_camera` (label-free): the chain whose output, fed with clean training images, makes the
   model's batch-norm inputs look most like they look on the device's images: per layer and
   channel, mean and variance compared as `moment_distance` (the statistics AdaBN matches,
   here used to choose pixels, not to renormalise). Coordinate search over the slots of the
   chain, each slot's settings tried with the others held, until no slot changes. Content
   differs between the two image sets too, which is why every slot has "off" and a setting
   is kept only when it lowers the distance beyond `MIN_GAIN`: clean device images fit no
   camera, and nothing is trained.
2. `train_through_camera`: a copy of the model trained on the LABELLED training images, each
   batch half clean and half passed through the fitted camera at a random strength between half
   and all of it (fresh noise every batch: a fit is never exact, and a milder camera costs less
   on clean photos), batch norm frozen (inference mode, as edgetl fine-tunes).
3. `choose_blend`: the weights interpolated between the model and the trained copy (WiSE-FT,
   Wortsman et al., CVPR 2022: the interpolation keeps in-distribution accuracy that plain
   fine-tuning loses, and most of the robustness). The share of the trained weights is the
   largest of `BLEND_SHARES` that loses no clean validation image against the original model
   (labels of the clean validation split only; the device's images have none).
Nothing about the architecture changes: the int8 file is exported and checked as usual
(calibrated on the device's images).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

# Slots in the order light meets them; each slot's settings are (kind, parameter) or None (off).
# Parameters are corruptions.py's (blur radii at 224 px, fractions of the 0..255 range, ...),
# spread roughly geometrically over the range a phone, a webcam or a Raspberry Pi camera module
# produces. None of benchmarks/domain_shift.py's cameras is on this grid: the benchmark
# measures a fit that can only come close, as on a real device.
SLOTS: dict[str, list] = {
    "blur": [None, ("defocus_blur", 1.5), ("defocus_blur", 2.5), ("defocus_blur", 4.0), ("defocus_blur", 6.0),
             ("motion_blur", 5.0), ("motion_blur", 10.0), ("motion_blur", 18.0)],
    "exposure": [None, ("brightness", -0.35), ("brightness", -0.2), ("brightness", -0.1), ("brightness", 0.1),
                 ("brightness", 0.2), ("brightness", 0.35)],
    "contrast": [None, ("contrast", 0.8), ("contrast", 0.6), ("contrast", 0.4)],
    "white_balance": [None, ("colour_cast", 0.08), ("colour_cast", 0.16), ("colour_cast", 0.25)],
    "noise": [None, ("gaussian_noise", 0.02), ("gaussian_noise", 0.04), ("gaussian_noise", 0.07),
              ("shot_noise", 80), ("shot_noise", 30), ("shot_noise", 12), ("shot_noise", 5)],
    "compression": [None, ("jpeg", 60), ("jpeg", 40), ("jpeg", 25), ("jpeg", 12)],
}
# A setting must lower the distance by this share to be kept over the current one: two samples
# of clean photos differ by content alone, and a near-tie is noise, not a camera.
MIN_GAIN = 0.05
FIT_IMAGES = 96  # per side: the statistics of 96 images per batch-norm layer are stable enough to rank settings
MAX_ROUNDS = 3
JITTER = 0.5  # each batch's camera strength is drawn from [1 - JITTER, 1]
BLEND_SHARES = (1.0, 0.85, 0.7, 0.55)  # shares of the trained weights tried, largest first
# Adam's step for the whole network (batch norm frozen). On flowers12's motion camera (Lite0,
# seed 0) 1e-4 cost 4 clean points and kept 90.0% shifted; 3e-5 cost 0.4 and reached 93.8%.
LEARNING_RATE = 3e-5


@dataclasses.dataclass
class CameraFit:
    steps: list[tuple[str, float]]  # the fitted chain, in order ([] = no camera found)
    distance: float  # moment distance of the fitted chain's output to the device images
    clean_distance: float  # the same for clean training images (no camera)
    evaluations: int
    seconds: float

    def to_json(self) -> dict:
        return {"steps": [[k, float(p)] for k, p in self.steps], "distance": round(self.distance, 4),
                "clean_distance": round(self.clean_distance, 4), "evaluations": self.evaluations,
                "seconds": round(self.seconds, 1)}


def moment_distance(a: list[tuple[np.ndarray, np.ndarray]], b: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean over batch-norm layers of the per-channel gap between two sets of (mean, variance):
    squared mean difference in units of b's spread, plus squared log-variance ratio (both zero
    when the statistics agree; the second is scale-free, so every layer counts alike)."""
    eps = 1e-3
    total = 0.0
    for (mu_a, var_a), (mu_b, var_b) in zip(a, b):
        mean_gap = (mu_a - mu_b) ** 2 / (var_b + eps)
        spread_gap = (np.log(var_a + eps) - np.log(var_b + eps)) ** 2
        total += float(np.mean(mean_gap + spread_gap))
    return total / max(len(a), 1)


def chain(settings: dict[str, tuple | None]) -> list[tuple[str, float]]:
    return [settings[slot] for slot in SLOTS if settings.get(slot) is not None]


def fit_camera(model, source: np.ndarray, target: np.ndarray, *, seed: int = 0, images: int = FIT_IMAGES,
               progress=None) -> CameraFit:
    """The camera chain (SLOTS) that makes clean `source` images look like the `target` ones to
    `model`'s batch-norm layers (module docstring). Deterministic for a seed."""
    from edgetl.compiler.data.corruptions import apply_steps
    from edgetl.compiler.training.adapt import _sample, statistics_function

    start = time.perf_counter()
    statistics = statistics_function(model)
    src = np.asarray(_sample(source, images, seed))
    reference = statistics(np.asarray(_sample(target, images, seed + 1)))
    cache: dict[tuple, float] = {}

    def distance(settings: dict) -> float:
        steps = chain(settings)
        key = tuple(steps)
        if key not in cache:
            shifted = apply_steps(src, steps, seed=seed) if steps else src
            cache[key] = moment_distance(statistics(shifted), reference)
            if progress:
                progress()
        return cache[key]

    settings: dict[str, tuple | None] = {slot: None for slot in SLOTS}
    clean = best = distance(settings)
    for _ in range(MAX_ROUNDS):
        changed = False
        for slot, options in SLOTS.items():
            current = settings[slot]
            for option in options:
                if option == current:
                    continue
                trial = distance({**settings, slot: option})
                if trial < best * (1 - MIN_GAIN):
                    settings[slot], best, changed = option, trial, True
        if not changed:
            break
    # The grid is coarse: each setting that is on then tries the midpoints to its neighbours of
    # the same kind, twice (a quarter of a grid step, at the end).
    for _ in range(2):
        for slot, current in settings.items():
            for option in _midpoints(slot, current):
                trial = distance({**settings, slot: option})
                if trial < best:
                    settings[slot], best = option, trial
    return CameraFit(chain(settings), best, clean, len(cache), time.perf_counter() - start)


def _midpoints(slot: str, current) -> list[tuple[str, float]]:
    """Settings halfway between `current` and its neighbours of the same kind in SLOTS[slot]
    (or, once refined, in the grid the current value now falls in)."""
    if current is None:
        return []
    kind, value = current
    grid = sorted({option[1] for option in SLOTS[slot] if option is not None and option[0] == kind} | {value})
    i = grid.index(value)
    neighbours = [grid[j] for j in (i - 1, i + 1) if 0 <= j < len(grid)]
    return [(kind, round((value + n) / 2, 4)) for n in neighbours]


def soften(steps, strength: float) -> list[tuple[str, float]]:
    """The camera at `strength` (0: no effect, 1: as fitted), each parameter moved towards its
    no-op value on its own scale (fewer photons is stronger noise, lower JPEG quality is
    stronger compression)."""
    out = []
    for kind, p in steps:
        if kind == "contrast":
            p = 1.0 - (1.0 - p) * strength
        elif kind == "shot_noise":
            p = p / max(strength, 1e-3)
        elif kind == "jpeg":
            p = round(100 - (100 - p) * strength)
        else:  # blur radii, brightness, colour cast, gaussian sigma: 0 is no effect
            p = p * strength
        out.append((kind, p))
    return out


def _clean_per_batch(batch_size: int) -> int:
    return max(1, batch_size // 2)  # the other half of each batch is the same images through the camera


def training_steps(images: int, batch_size: int, epochs: int) -> int:
    """How many batches (and `progress()` calls) train_through_camera runs."""
    return epochs * -(-images // _clean_per_batch(batch_size))


def train_through_camera(model, x, y, steps, *, epochs: int = 2, learning_rate: float = LEARNING_RATE, batch_size: int = 32,
                         seed: int = 0, jitter: float = JITTER, progress=None):
    """A copy of `model` trained on labelled (x, y), each batch half clean and half through the
    camera `steps` (new noise every batch); batch norm frozen. Returns (copy, seconds)."""
    from edgetl.compiler.data.corruptions import apply_steps
    from edgetl.compiler.training.adapt import copy_model
    from edgetl.models import LOGITS_LAYER

    from edgetl._compat import keras, tf

    start = time.perf_counter()
    tuned = copy_model(model)
    for layer in tuned.layers:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    logits_model = keras.Model(tuned.input, tuned.get_layer(LOGITS_LAYER).output)
    variables = logits_model.trainable_variables
    optimizer = keras.optimizers.Adam(learning_rate)

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = logits_model(images, training=False)  # batch norm in inference mode: its statistics stay
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    rng = np.random.default_rng(seed)
    half = _clean_per_batch(batch_size)
    for epoch in range(epochs):
        order = rng.permutation(len(y))
        for b, i in enumerate(range(0, len(order), half)):
            idx = np.sort(order[i : i + half])
            clean = np.asarray(x[idx])
            batch_seed = seed * 100_003 + epoch * 1_009 + b
            strength = 1.0 - jitter * np.random.default_rng(batch_seed).random()
            shifted = apply_steps(clean, soften(steps, strength), seed=batch_seed)
            labels = np.asarray(y)[idx]
            step(tf.constant(np.concatenate([clean, shifted]), tf.float32), tf.constant(np.concatenate([labels, labels]), tf.int32))
            if progress:
                progress()
    return tuned, time.perf_counter() - start


def blend(model, tuned, share: float):
    """A copy of `model` whose weights are (1 - share) * model's + share * tuned's."""
    from edgetl.compiler.training.adapt import copy_model

    out = copy_model(model)
    out.set_weights([(1.0 - share) * a + share * b for a, b in zip(model.get_weights(), tuned.get_weights())])
    return out


def choose_blend(model, tuned, clean_val, batch_size: int = 32):
    """The blend (module docstring, 3.) with the largest share of `tuned` that gets no fewer clean
    validation images right than `model`; the smallest share when none does, and all of `tuned`
    when there are no validation labels. Returns (model, share, {share: correct images})."""
    from edgetl.runtime.keras_model import KerasSession

    x, y = clean_val if clean_val is not None else (None, None)
    if y is None or len(y) == 0:
        return tuned, 1.0, {}
    correct = lambda m: int(np.sum(KerasSession(model=m).predict(x, batch_size).argmax(1) == np.asarray(y)))  # noqa: E731
    floor = correct(model)
    counts = {}
    for share in BLEND_SHARES:
        candidate = tuned if share == 1.0 else blend(model, tuned, share)
        counts[share] = correct(candidate)
        if counts[share] >= floor:
            return candidate, share, counts
    return candidate, share, counts
