"""--student-size auto: the student's input size, chosen by measuring each candidate size.

Fewer pixels are the lever that makes the deployed file faster on every CPU and in int8
(unstructured pruning does not: XNNPACK's int8 kernels skip no zeros). A 160 px EfficientNet-Lite0
does about half the work of the 224 px one, and what it costs in accuracy depends on the images,
so it is measured on the user's data rather than assumed.

For each candidate size (the student's own and about 6/7, 5/7 and 4/7 of it, in steps of 8 px:
224, 192, 160 and 128 for a 224 px model) the head stage runs as it always does: the frozen
ImageNet backbone at that size with the linear probe as its head. Its accuracy is the probe's
out-of-fold accuracy on the training images (every mode has it, and it is paired image by image
across sizes); its speed is the p50 of its full-integer int8 TFLite file, built with a
class-balanced calibration sample and timed at batch 1 with the compile's threads, all sizes
interleaved in rounds so that a burst of load elsewhere does not land on one, and timed again
in more rounds when a smaller size still reads slower than a larger one (`time_in_size_order`).

The choice follows the quantization gate's rule (compiler/compression/optimize.py): a size passes
when its accuracy is at most --max-accuracy-drop points below the student's own size and every
larger size passed (accuracy falls with resolution, so a smaller size that recovers after a
larger one failed is taken for noise); the fastest
that passes is kept (p50s within LATENCY_TIE of the best count as a tie, and the larger size, the
more accurate one, wins it). With --max-latency-ms the most accurate passing size within the
budget is kept instead; when none is within it, the fastest passing one, and the record says so.
The chosen size's probe-headed model is the head stage's result, so distillation, the baseline
and every later stage run at that size, and nothing is trained twice.

What this does not measure: each size after distillation (a full training per size). The probe
ranks what the frozen features lose at fewer pixels; distillation then starts from the chosen one.

When --max-latency-ms is below every passing size's p50, fewer pixels alone cannot meet it, and
the next lever is fewer channels: the student's channel-pruned variants (registered as
NAME_slimPP, e.g. efficientnet_lite0_slim75). Their int8 files are built from untrained graphs
(latency does not depend on the weights) at each passing size and timed interleaved with the own
size's file, and the choice's record names the one to try: the widest variant (the fewest
channels cut) at the largest passing size within the budget. Its accuracy is not measured here:
a slim student's probe cannot rank it (the cut damages exactly the frozen features the probe
reads; it needs a full distillation to recover). slim.py distils it after the full student and
deploys it only when it passes the accuracy gate against that student. Pixels come before
channels because the probe can gate fewer pixels cheaply on the user's data, where a channel
cut is judged only after a distillation.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
from edgetl.compiler.compression.optimize import LATENCY_TIE, points
from edgetl.compiler.data.image_store import ImageCache
from edgetl.compiler.progress import console
from edgetl.compiler.spec.config import MIN_INPUT_SIZE, CompileConfig
from edgetl.compiler.stages.trained import TrainedModel

FRACTIONS = (1.0, 6 / 7, 5 / 7, 4 / 7)  # 224 -> 224, 192, 160, 128: the MobileNet resolutions
STEP = 8  # px: convolution strides divide such sizes evenly


def candidate_sizes(native: int) -> list[int]:
    """The student's own size and the smaller ones tried, largest first."""
    sizes = [native]  # as the model was pretrained, even when not a multiple of STEP (Lite2: 260)
    for fraction in FRACTIONS[1:]:
        size = max(MIN_INPUT_SIZE, STEP * round(native * fraction / STEP))
        if size <= native and size not in sizes:
            sizes.append(size)
    return sizes


@dataclasses.dataclass
class SizeCandidate:
    size: int
    correct: np.ndarray  # out-of-fold: whether each training image was classified right
    p50_ms: float = float("inf")
    file_mb: float = 0.0
    val_accuracy: float | None = None
    val_ci95: list | None = None  # with val_images: the probe's figure on the val split, when there is one
    val_images: int = 0
    gate: str = ""

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.correct))

    def to_json(self, reference: SizeCandidate) -> dict:
        from edgetl.compiler.evaluation.stats import Accuracy, paired_difference

        row = {"size": self.size, "accuracy": Accuracy(int(self.correct.sum()), len(self.correct)).to_json(),
               "val_accuracy": self.val_accuracy, "val_ci95": self.val_ci95, "val_images": self.val_images, "int8_p50_ms": round(self.p50_ms, 3),
               "p50_vs_own_size": round(self.p50_ms / reference.p50_ms, 3), "int8_mb": round(self.file_mb, 3), "gate": self.gate}
        if self is not reference:
            row["vs_own_size"] = paired_difference(self.correct.tolist(), reference.correct.tolist()).to_json()
        return row


def choose(candidates: list[SizeCandidate], max_drop_points: float, max_latency_ms: float | None) -> tuple[SizeCandidate, str]:
    """The kept size and why, in words. candidates[0] is the student's own size (the reference)."""
    reference = candidates[0]
    floor = reference.accuracy - max_drop_points / 100.0
    failed_above = None
    for c in candidates:  # largest first
        if failed_above is not None:
            # Accuracy falls with resolution; a smaller size that scores within the drop after a
            # larger one failed is far more likely noise (on a few hundred images one image is
            # most of a point) than a real recovery, so it is not kept.
            c.gate = f"not considered: {failed_above} px, a larger size, failed"
        elif c.accuracy + 1e-9 >= floor:
            c.gate = "passed"
        else:
            c.gate = f"failed: {100 * (reference.accuracy - c.accuracy):.2f} points below {reference.size} px (max {max_drop_points:g})"
            failed_above = c.size
    passing = [c for c in candidates if c.gate == "passed"]  # the reference always passes
    best = min(c.p50_ms for c in passing)
    fastest = max((c for c in passing if c.p50_ms <= best * (1 + LATENCY_TIE)), key=lambda c: (c.accuracy, c.size))
    rejected = "".join(f"; {c.size} px rejected ({c.gate})" for c in candidates if c.gate != "passed")
    within = f"within {points(max_drop_points)} of {reference.size} px's probe accuracy"
    if max_latency_ms is not None:
        fast = [c for c in passing if c.p50_ms <= max_latency_ms]
        if fast:
            chosen = max(fast, key=lambda c: (c.accuracy, c.size))
            return chosen, (f"{chosen.size} px: the most accurate size {within} whose int8 p50 ({chosen.p50_ms:.2f} ms) "
                            f"is within the {max_latency_ms:g} ms budget" + rejected)
        return fastest, (f"{fastest.size} px: NO size {within} meets the {max_latency_ms:g} ms budget; the fastest of them "
                         f"({fastest.p50_ms:.2f} ms int8 p50)" + rejected)
    return fastest, f"{fastest.size} px: the fastest int8 file ({fastest.p50_ms:.2f} ms p50) {within}" + rejected


RETIME_ROUNDS = 6  # a second, longer timing when the first is out of size order (a few seconds)


def out_of_size_order(p50s: list[float], chains: list[list[int]]) -> list[tuple[int, int]]:
    """(i, j) for each file j that is the same graph as file i at fewer pixels yet timed slower
    beyond the measurement tie. `chains` lists such files' indices, largest input first."""
    return [(i, j) for chain in chains for k, i in enumerate(chain) for j in chain[k + 1:]
            if p50s[j] > p50s[i] * (1 + LATENCY_TIE)]


def time_in_size_order(sessions: list, chains: list[list[int]], label: str) -> tuple[list[float], str]:
    """Best p50s of `sessions` interleaved (compiler/compression/optimize.py), and a note.

    The same graph at fewer pixels does less of every operation, so it is never slower; when a
    smaller size reads slower beyond the tie, the machine was busy during its turns (seen here
    beside another compile: 192 px at 2.59 ms, 224 px at 1.74 ms), and a choice made on those
    figures is noise. They are then timed again in more rounds and each file keeps its faster
    figure; if they are still out of order, the note says the p50s may be noise."""
    from edgetl.compiler.compression.optimize import best_p50_interleaved

    p50s = best_p50_interleaved(sessions, label)
    if not out_of_size_order(p50s, chains):
        return p50s, ""
    console.print("    [yellow]a smaller graph (fewer pixels or channels) timed slower than a larger one: the machine is busy; timing again[/]")
    again = best_p50_interleaved(sessions, f"{label}, again", rounds=RETIME_ROUNDS)
    p50s = [min(a, b) for a, b in zip(p50s, again)]
    if not out_of_size_order(p50s, chains):
        return p50s, "timed twice: in the first timing a smaller graph (fewer pixels or channels) was slower than a larger one (a busy machine)"
    note = ("a smaller graph (fewer pixels or channels) was timed slower than a larger one twice: the machine was busy, so these p50s, "
            "and a choice made on them, may be noise; re-run on a quiet machine or pass --student-size")
    console.print(f"    [yellow]warning:[/] {note}")
    return p50s, note


def narrower_students(name: str) -> list[str]:
    """The channel-pruned variants of student `name` (registered as NAME_slimPP) that keep fewer
    channels than it, widest first. A slim student's are its base model's narrower ones
    (efficientnet_lite0_slim75: efficientnet_lite0_slim50)."""
    import re

    from edgetl.models import list_models

    cut = re.fullmatch(r"(.+)_slim(\d+)", name)
    base, kept = (cut.group(1), int(cut.group(2))) if cut else (name, 100)
    prefix = f"{base}_slim"
    percents = {n: n[len(prefix):] for n in list_models(f"{prefix}*", include_test=True)}
    return sorted((n for n, p in percents.items() if p.isdigit() and int(p) < kept), key=lambda n: -int(percents[n]))


@dataclasses.dataclass
class SlimOption:
    """A channel-pruned student's untrained int8 graph at one size: what it would cost to run."""

    model: str
    size: int
    p50_ms: float = float("inf")
    p50_vs_own_size: float = float("inf")  # paired with the own size's file in the same rounds
    file_mb: float = 0.0

    def to_json(self) -> dict:
        return {"model": self.model, "size": self.size, "int8_p50_ms": round(self.p50_ms, 3),
                "p50_vs_own_size": round(self.p50_vs_own_size, 3), "int8_mb": round(self.file_mb, 3)}


def slim_advice(options: list[SlimOption], max_latency_ms: float, reference: str = "the student's own size") -> tuple[SlimOption | None, str]:
    """(the option to compile, or None, and a clause saying so). `options` come widest variant
    first and, within one, largest size first: the first within the budget cuts the least.
    `reference` names the file each option's p50 ratio is paired with."""
    if not options:
        return None, ""
    within = [o for o in options if o.p50_ms <= max_latency_ms]
    if not within:
        fastest = min(options, key=lambda o: o.p50_ms)
        return None, (f"; nor does a channel-pruned student: the fastest, {fastest.model} at {fastest.size} px, "
                      f"is {fastest.p50_ms:.2f} ms int8 p50 untrained")
    pick = within[0]
    return pick, (f"; a channel-pruned student meets it: {pick.model} at {pick.size} px is {pick.p50_ms:.2f} ms int8 p50 "
                  f"({pick.p50_vs_own_size:.2f}x {reference}; untrained graph, so its accuracy is unknown until "
                  f"distilled): it is distilled after the full student and deployed if it passes the accuracy gate")


def choose_student_size(config: CompileConfig, model_config, images: ImageCache, num_classes: int, strategy) -> TrainedModel:
    """The probe-headed student at the chosen size, its record holding every size's figures."""
    from edgetl.compiler.evaluation.stats import describe_accuracy
    from edgetl.compiler.stages.student import probe_headed_student

    start = time.perf_counter()
    sizes = candidate_sizes(model_config.input_size)
    console.print(f"    --student-size auto: trying {', '.join(f'{s} px' for s in sizes)} (probe accuracy, int8 p50 with {config.threads} threads)")
    heads, candidates = {}, []
    with tempfile.TemporaryDirectory(prefix="edgetl-sizes-") as folder:
        paths = {}
        for size in sizes:
            trained, probe = probe_headed_student(config, model_config, size, images, num_classes, strategy, label=f"student {size} px")
            _, y = images.get("train", size)
            head = trained.training["head"]
            candidate = SizeCandidate(size, probe.oof_probs.argmax(1) == y, val_accuracy=head["val_accuracy"],
                                      val_ci95=list(head["val_ci95"]) if head.get("val_ci95") else None,  # as JSON reads it back
                                      val_images=head.get("val_images") or 0)
            paths[size] = Path(folder) / f"student_{size}px_int8.tflite"
            _write_int8(config, _plain(trained, strategy, num_classes, config), images, size, paths[size])
            candidate.file_mb = paths[size].stat().st_size / 1e6
            heads[size] = trained
            candidates.append(candidate)
        timing_notes = [_time_interleaved(config, candidates, paths, images)]
        chosen, why = choose(candidates, config.max_accuracy_drop, config.max_latency_ms)
        for c in candidates:
            console.print(f"    {c.size} px: probe accuracy {describe_accuracy(c.accuracy, len(c.correct))} out of fold, "
                          f"int8 p50 {c.p50_ms:.2f} ms ({c.p50_ms / candidates[0].p50_ms:.2f}x), {c.file_mb:.2f} MB")
        slim, pick = [], None
        if config.max_latency_ms is not None and chosen.p50_ms > config.max_latency_ms:
            passing = [c.size for c in candidates if c.gate == "passed"]
            slim, note = _time_slim_options(config, model_config.name, passing, candidates[0].size, paths[candidates[0].size],
                                            images, num_classes, Path(folder))
            timing_notes.append(note)
            pick, clause = slim_advice(slim, config.max_latency_ms, f"the {candidates[0].size} px {model_config.name} file")
            why += clause or f"; {model_config.name} has no narrower channel-pruned variant to try"
    console.print(f"    student input size: {why}")
    head = heads[chosen.size]
    head.training["resolution"] = {
        "chosen": chosen.size, "why": why, "sizes": [c.to_json(candidates[0]) for c in candidates],
        "slim_options": [o.to_json() for o in slim], "slim_pick": pick.to_json() if pick else None,
        "timing_note": "; ".join(n for n in timing_notes if n),
        "accuracy_on": f"out-of-fold probe predictions on the {len(chosen.correct)} training images",
        "max_accuracy_drop": config.max_accuracy_drop, "max_latency_ms": config.max_latency_ms, "threads": config.threads,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return head


def slim_chains(options: list[SlimOption], own_size: int) -> list[list[int]]:
    """The orders the timings must keep (`out_of_size_order`), as indices into [the own size's
    file] + options: each variant's sizes, largest first, are one graph at fewer pixels; and at one
    size, the own student (where it is that size) then each narrower variant has fewer channels.
    Neither can be slower than the one before it."""
    chains = [[1 + i for i, o in enumerate(options) if o.model == model] for model in dict.fromkeys(o.model for o in options)]
    sizes = dict.fromkeys(o.size for o in options)
    return chains + [([0] if size == own_size else []) + [1 + i for i, o in enumerate(options) if o.size == size] for size in sizes]


def _time_slim_options(config: CompileConfig, name: str, sizes: list[int], own_size: int, own_path: Path, images: ImageCache,
                       num_classes: int, folder: Path) -> tuple[list[SlimOption], str]:
    """Each channel-pruned variant of `name` at each of `sizes`, built untrained, written as int8
    and timed interleaved with the own size's file (`own_path`): widest first, largest size first;
    with the timing's note (`time_in_size_order`)."""
    from edgetl.models import create_model
    from edgetl.runtime import open_session

    variants = narrower_students(name)
    options = [SlimOption(variant, size) for variant in variants for size in sizes]
    if not options:
        return [], ""
    console.print(f"    no passing size meets the {config.max_latency_ms:g} ms budget: timing "
                  f"{', '.join(variants)} at {', '.join(f'{s} px' for s in sizes)} (untrained graphs)")
    paths = []
    for option in options:
        # Random weights: the int8 graph and its kernels, hence its speed, are those of the trained model.
        model = create_model(option.model, weights=None, num_classes=num_classes, dropout=config.dropout, input_size=option.size)
        path = folder / f"{option.model}_{option.size}px_int8.tflite"
        _write_int8(config, model, images, option.size, path)
        option.file_mb = path.stat().st_size / 1e6
        paths.append(path)
    sessions = [(open_session(own_path, threads=config.threads), images.get("train", own_size)[0][0])]
    sessions += [(open_session(p, threads=config.threads), images.get("train", o.size)[0][0]) for o, p in zip(options, paths)]
    chains = slim_chains(options, own_size)
    (own, *p50s), note = time_in_size_order(sessions, chains, "channel-pruned students: latency (interleaved rounds)")
    for option, p50 in zip(options, p50s):
        option.p50_ms, option.p50_vs_own_size = p50, p50 / own
        console.print(f"    {option.model} at {option.size} px: int8 p50 {p50:.2f} ms ({p50 / own:.2f}x), {option.file_mb:.2f} MB")
    return options, note


def _plain(trained: TrainedModel, strategy, num_classes: int, config: CompileConfig):
    """The model to convert: built under a distribution strategy, a copy outside it (as the
    pipeline's `_plain_copies`: mirrored batch-norm statistics must not reach the graph)."""
    from edgetl.compiler.training import distribution

    if distribution.is_default(strategy):
        return trained.model
    from edgetl.compiler.spec.precision import float32_copy

    return float32_copy(trained.model, trained.name, num_classes, trained.input_size, config.dropout)


def _write_int8(config: CompileConfig, model, images: ImageCache, size: int, path: Path) -> None:
    from edgetl.compiler.compression.quantize import calibration_sample, convert_tflite

    x, y = images.get("train", size)
    calibration = calibration_sample(x, y, config.calibration_size, seed=config.seed)
    io_dtype = str(config.io_dtype or "uint8")
    path.write_bytes(convert_tflite(model, "int8", calibration=calibration, io_dtype=io_dtype))


def _time_interleaved(config: CompileConfig, candidates: list[SizeCandidate], paths: dict[int, Path], images: ImageCache) -> str:
    """Each size's int8 file timed as the optimize stage times its candidates; a note when the
    timings had to be taken again (`time_in_size_order`), else ""."""
    from edgetl.runtime import open_session

    sessions = [(open_session(paths[c.size], threads=config.threads), images.get("train", c.size)[0][0]) for c in candidates]
    p50s, note = time_in_size_order(sessions, [list(range(len(candidates)))], "student sizes: latency (interleaved rounds)")
    for c, p50 in zip(candidates, p50s):
        c.p50_ms = p50
    return note
