"""--student-size auto with a --max-latency-ms that no input size meets: the channel-pruned
student that meets it, distilled and gated by the compile itself (part of the student stage).

resolution.py times the student's channel-pruned variants (NAME_slimPP) as untrained int8
graphs and picks the widest one at the largest passing size within the budget. Its accuracy
cannot be read off a probe (the cut damages exactly the frozen features a probe reads; only
distillation recovers them), so here it is trained as any student is: its probe head, then
distillation from the same teacher, chosen by the same selection (held-out split or
cross-validation), each step in the stage cache under the slim student's own keys.

The gate then compares it with the model it would replace, the full student distilled at the
kept size, on the same images: out of fold on every training image under cross-validation, or
on the val split under held-out selection (both models before any refit, so neither has seen
those images). Passing is the quantization gate's rule: at most --max-accuracy-drop points
below (point estimates, as every edgetl gate; the paired interval is recorded beside them).
A slim student that passes is deployed (the budget was what the user asked for); one that
fails is recorded with its figures and the full student stays.

Measured on flowers12 before this was automatic (README, "Fewer channels"): slim75 at 160 px,
distilled with --selection cv, was 0.47x the 224 px p50 at 0.4 points below it on test; under
held-out selection the same student kept its damaged probe (91.2%), which is why the note
below points a held-out compile at --selection cv.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from edgetl.compiler.progress import console


def slim_gate(slim_correct, full_correct, max_drop_points: float) -> tuple[bool, str, dict]:
    """(passed, the verdict in words, the figures) for a slim student against the full one,
    each image's correctness on the same images."""
    from edgetl.compiler.evaluation.stats import Accuracy, paired_difference

    slim_correct, full_correct = np.asarray(slim_correct, bool), np.asarray(full_correct, bool)
    slim = Accuracy(int(slim_correct.sum()), len(slim_correct))
    full = Accuracy(int(full_correct.sum()), len(full_correct))
    difference = paired_difference(slim_correct.tolist(), full_correct.tolist())
    drop = 100 * (full.value - slim.value)
    passed = slim.value + 1e-9 >= full.value - max_drop_points / 100.0
    words = (f"{'passed' if passed else 'failed'}: {drop:.2f} points below the full student" if drop > 0
             else f"passed: {-drop:.2f} points above the full student" if drop < 0 else "passed: level with the full student")
    why = f"{words} (max {max_drop_points:g}; paired {difference.span()})"
    figures = {"slim": slim.to_json(), "full": full.to_json(), "difference": difference.to_json()}
    return passed, why, figures


@dataclasses.dataclass
class SlimTrial:
    """What the slim trial hands back to the pipeline."""

    config: object  # the CompileConfig with the slim student and its size (for its baseline and keys)
    model_config: object
    head: object  # TrainedModel: the slim student's probe-headed model
    student: object  # TrainedModel: the slim student, distilled
    deployed: bool  # whether it passed the gate and replaces the full student


def selection_correct(trained, images) -> tuple[np.ndarray, str]:
    """Whether each image was classified right on the images the student's selection judged it,
    and what those images are: out of fold under cross-validation, the val split otherwise."""
    if images.held_out["val"]:
        from edgetl.runtime.keras_model import KerasSession

        x, y = images.get("val", trained.input_size)
        probs = KerasSession(model=trained.model).predict(x, 32)
        return probs.argmax(1) == y, f"on the {len(y)} val images"
    _, y = images.get("train", trained.input_size)
    oof = (trained.selection or {}).get("oof_pred")
    if oof is None:
        raise RuntimeError("internal error: a cross-validated student has no out-of-fold predictions")
    return np.asarray(oof) == y, f"out of fold on the {len(y)} training images"


def try_slim_student(config, full_head, full_student, teacher, images, num_classes: int, strategy, selection: str, cache, keys_for):
    """Distil the channel-pruned student resolution.py picked and gate it; None when it picked none.

    keys_for(config): the stage keys of a config (the slim student caches under its own).
    The resolution record of the deployed student gains a `slim_trial` entry either way."""
    from edgetl.compiler.evaluation.stats import describe_accuracy
    from edgetl.compiler.stages.student import (
        distil,
        selection_note,
        train_student_head,
    )
    from edgetl.compiler.stages.trained import cached
    from edgetl.models import get_config

    resolution = full_head.training.get("resolution") or {}
    pick = resolution.get("slim_pick")
    if not pick:
        return None
    start = time.perf_counter()
    slim_config = dataclasses.replace(config, student=pick["model"], student_size=pick["size"])
    model_config = get_config(pick["model"])
    keys = keys_for(slim_config)
    console.print(f"    --max-latency-ms {config.max_latency_ms:g}: no input size meets it, {pick['model']} at {pick['size']} px "
                  f"does ({pick['int8_p50_ms']:.2f} ms untrained): distilling it too, then gating it against the full student")
    note = selection_note(model_config, selection, len(images.samples.get("val") or []))
    if note:
        console.print(f"    [yellow]note:[/] {note}")
    head = cached(cache, "student_head", keys["student_head"], lambda: train_student_head(
        slim_config, model_config, pick["size"], images, num_classes, strategy))
    student = cached(cache, "student", keys["student"], lambda: distil(
        slim_config, model_config, head, teacher, images, num_classes, strategy, selection))
    slim_correct, on = selection_correct(student, images)
    full_correct, _ = selection_correct(full_student, images)
    passed, why, figures = slim_gate(slim_correct, full_correct, config.max_accuracy_drop)
    full_text = f"{full_student.name} at {full_student.input_size} px"
    outcome = (f"{pick['model']} at {pick['size']} px is deployed: it meets the {config.max_latency_ms:g} ms budget and {why}"
               if passed else f"{full_text} stays (over the budget): {pick['model']} at {pick['size']} px {why}")
    slim_figure, full_figure = (describe_accuracy(figures[k]["accuracy"], figures[k]["n"]) for k in ("slim", "full"))
    console.print(f"    {pick['model']} ({trained_as(student.selection)}) against {full_text}, {on}: {slim_figure} vs {full_figure}; {outcome}")
    trial = {"model": pick["model"], "size": pick["size"], "untrained_int8_p50_ms": pick["int8_p50_ms"], "accuracy_on": on,
             **figures, "max_accuracy_drop": config.max_accuracy_drop, "passed": passed, "deployed": passed,
             "why": outcome, "trained_as": trained_as(student.selection), "slim_selection": _without_predictions(student.selection),
             "seconds": round(time.perf_counter() - start, 1)}
    record = {**resolution, "slim_trial": trial}
    kept = student if passed else full_student
    kept.training = {**kept.training, "resolution": record}
    return SlimTrial(slim_config, model_config, head, student, passed)


def trained_as(selection: dict | None) -> str:
    """What the slim student's selection kept, in words: distillation may not have beaten its probe."""
    if selection and selection.get("probe_kept"):
        return "its linear probe: distillation did not beat it"
    return "distilled"


def _without_predictions(selection: dict | None) -> dict | None:
    """A selection record for the report without its per-image predictions (the slim student's
    own record, when deployed, keeps them)."""
    if selection is None:
        return None
    return {k: v for k, v in selection.items() if k != "oof_pred"}
