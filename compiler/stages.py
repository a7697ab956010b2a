"""The stages of one compile, declared once.

`compile_model` enters its stages through `StageSequence`, which refuses a stage that is not the
next one declared here for the compile's settings and, at the end, one that was skipped;
`--dry-run` lists the same declaration with what the stage cache already holds. So what the
dry run promises and what the run does cannot drift apart: a change to one that is not made to
the other fails the first compile that takes the changed path (tests/fast/test_stages.py and
the pipeline tests cover every branch).

Importing this module imports no TensorFlow.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgetl.compiler.cache import StageCache
    from edgetl.compiler.progress import StageTimer
    from edgetl.compiler.spec.config import CompileConfig

# The float exports are cached as files, not as a model (compiler/cache.py, StageCache.load_files).
EXPORT_FILES = ("model.fp32.tflite", "model.fp32.onnx")


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    does: str  # one line: what the stage makes (the dry run prints it)
    applies: Callable[[CompileConfig], bool]
    # Entries of the stage cache the stage reads and writes, named as in `stage_keys`
    # (compiler/pipeline.py); empty when it always runs.
    caches: tuple[str, ...] = ()

    def cached(self, cache: StageCache, keys: dict[str, str]) -> bool:
        """Whether every cache entry of this stage is already held (the run reuses them)."""
        if not self.caches or cache.root is None:
            return False
        return all(cache.holds(entry, keys[entry], EXPORT_FILES if entry == "export" else None) for entry in self.caches)


def _always(config: CompileConfig) -> bool:
    return True


def _trains(config: CompileConfig) -> bool:
    return config.model is None  # --model: nothing is trained, the given model is deployed


def _distils(config: CompileConfig) -> bool:
    return _trains(config) and config.distills


STAGES: tuple[Stage, ...] = (
    Stage("data", "decode-check every image; split, or plan the cross-validation folds", _always),
    Stage("source", "wrap the given --model: raw pixels in, its preprocessing inside the graph", lambda c: c.model is not None),
    Stage("teacher", "linear probe on frozen features, then fine-tuning; the better by the selection rule", _trains, ("teacher",)),
    Stage("student", "the student's probe, then distillation from the teacher", _distils, ("student_head", "student")),
    Stage("baseline", "the student on the labels alone, for the ablation", lambda c: _distils(c) and c.baseline, ("baseline",)),
    Stage("adapt", "adapt the deployed model to the --unlabeled images", lambda c: c.unlabeled is not None and c.adapt != "none", ("adapt",)),
    Stage("export", "float32 TFLite and ONNX files", _always, ("export",)),
    Stage("verify", "each float export against its Keras model", _always),
    Stage("optimize", "quantized (and pruned) candidates, measured; the accuracy gate chooses", _always),
    Stage("package", "deployed files with metadata, labels, app handoff", _always),
    Stage("robustness", "the deployed files on camera corruptions", lambda c: c.robustness),
)


def stages_for(config: CompileConfig) -> tuple[Stage, ...]:
    """The stages a compile with these (resolved) settings runs, in order."""
    return tuple(stage for stage in STAGES if stage.applies(config))


class StageSequence:
    """Times each stage of one compile and holds the run to the declaration above."""

    def __init__(self, config: CompileConfig, timer: StageTimer):
        self.timer = timer
        self.expected = [stage.name for stage in stages_for(config)]
        self.entered: list[str] = []

    @contextlib.contextmanager
    def stage(self, name: str, title: str):
        position = len(self.entered)
        if position >= len(self.expected) or self.expected[position] != name:
            raise RuntimeError(
                f"internal error: the compile entered stage {name!r} where compiler/stages.py declares "
                f"{self.expected[position] if position < len(self.expected) else 'no further stage'!r} "
                f"(declared for these settings: {', '.join(self.expected)})"
            )
        self.entered.append(name)
        with self.timer.stage(name, title):
            yield

    def finish(self) -> None:
        """Raise when a declared stage never ran (the dry run would have promised it)."""
        if self.entered != self.expected:
            missing = [name for name in self.expected if name not in self.entered]
            raise RuntimeError(f"internal error: declared stages never ran: {', '.join(missing)} (compiler/stages.py)")
