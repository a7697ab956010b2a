"""The stages of one compile: declared once here, each run by the module named after it.

  source      source.py      --model: the user's classifier wrapped, nothing trained
  teacher     teacher.py     linear probe, then fine-tuning; the better kept
  student     student.py     the student's probe, then distillation from the teacher
              resolution.py  (--student-size auto) the probe at each size, int8 timed, one chosen
              slim.py        (and no size meets --max-latency-ms) the channel-pruned student, distilled and gated
  baseline    student.py     the same student on the labels alone (the ablation)
  adapt       adapt.py       the deployed model adapted to the device's unlabelled photos
  export      export.py      float32 TFLite and ONNX files
  verify      export.py      each float export run against its Keras model
  optimize    optimize.py    quantized and pruned candidates, measured, through the gate
  package     package.py     deployed files with metadata, the target's checks, app handoff
  robustness  robustness.py  the deployed files on camera corruptions

(trained.py: what a training stage hands on, and its round trip through the stage cache.)
`compiler/pipeline.py` is the spine that calls them in this order.

A new stage: declare it in STAGES below (when it applies, what the dry run says, its cache
entries), give a cached stage its key in `stage_keys`, write its run in a module here, and call
that from `compiler/pipeline.py` inside `stages.stage(name, ...)` at its place in the order.
tests/fast/test_stages.py then holds the dry run and the run to the same list.

`compile_model` enters its stages through `StageSequence`, which refuses a stage that is not the
next one declared here for the compile's settings and, at the end, one that was skipped;
`--dry-run` lists the same declaration with what the stage cache already holds. So what the
dry run promises and what the run does cannot drift apart: a change to one that is not made to
the other fails the first compile that takes the changed path (tests/fast/test_stages.py and
the pipeline tests cover every branch).

Importing this package imports no TensorFlow (its stage modules import it when they run).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edgetl.compiler.cache import file_digest, hash_digests, hash_files, stage_key
from edgetl.compiler.spec.modes import AUTO_WITHOUT_TARGET_VAL
from edgetl.models import get_config

if TYPE_CHECKING:
    from edgetl.compiler.cache import StageCache
    from edgetl.compiler.data.datasets import Dataset
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
    # below; empty when it always runs.
    caches: tuple[str, ...] = ()
    # How a user leaves the stage out when it is optional (the report prices it), else "".
    skip_with: str = ""

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
    Stage("student", "the student's probe, then distillation from the teacher", _distils, ("student_head", "student"),
          skip_with="--student none (deploys the teacher)"),
    Stage("baseline", "the student on the labels alone, for the ablation", lambda c: _distils(c) and c.baseline, ("baseline",),
          skip_with="--no-baseline"),
    Stage("adapt", "adapt the deployed model to the --unlabeled images", lambda c: c.unlabeled is not None and c.adapt != "none", ("adapt",),
          skip_with="--adapt none"),
    Stage("export", "float32 TFLite and ONNX files", _always, ("export",)),
    Stage("verify", "each float export against its Keras model", _always),
    Stage("optimize", "quantized (and pruned) candidates, measured; the accuracy gate chooses", _always),
    Stage("package", "deployed files with metadata, labels, app handoff", _always),
    Stage("robustness", "the deployed files on camera corruptions", lambda c: c.robustness, skip_with="--no-robustness"),
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
                f"internal error: the compile entered stage {name!r} where compiler/stages/__init__.py declares "
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
            raise RuntimeError(f"internal error: declared stages never ran: {', '.join(missing)} (compiler/stages/__init__.py)")


# -- cache keys ----------------------------------------------------------------------------


def stage_keys(config: CompileConfig, dataset: Dataset, unlabeled) -> dict[str, str]:
    """What each cached stage's result depends on, hashed (compiler/cache.py): the keys the
    declaration's `caches` name, plus the data's, for the manifest."""
    # The scan took every labelled file's digest already (Dataset.fingerprints): none is read again.
    paths = [s.path for split in dataset.splits.values() for s in split]
    content = hash_digests({p: dataset.fingerprints.get(p) or file_digest(p) for p in paths}, dataset.root)
    unlabeled_hash = hash_files([s.path for s in unlabeled], Path(config.unlabeled).resolve()) if unlabeled else None
    data = stage_key(
        "data",
        content=content,
        splits={split: [(s.path.relative_to(dataset.root).as_posix(), s.label) for s in samples] for split, samples in dataset.splits.items()},
        classes=dataset.classes,
    )
    common = dict(data=data, batch_size=config.batch_size, dropout=config.dropout, patience=config.patience, seed=config.seed,
                  selection=dataset.selection, folds=config.folds)
    keys = {"data_content": content, "data": data}
    if config.model is not None:  # nothing trained: the exports depend on the file and how it is wrapped
        model = Path(config.model)
        files = sorted(p for p in model.rglob("*") if p.is_file()) if model.is_dir() else [model]
        contract = {n: getattr(config, n) for n in ("input_size", "preprocess", "mean", "std", "scale", "channel_order", "model_output")}
        keys["source"] = stage_key(
            "source", model=hash_files(files, model if model.is_dir() else model.parent), classes=dataset.classes, **{k: str(v) for k, v in contract.items()})
        return _deployment_keys(config, keys, keys["source"], unlabeled_hash)
    head = dict(head="linear probe, C by cross-validation")
    teacher = stage_key(
        "teacher",
        **common,
        **head,
        model=config.teacher,
        weights=_weights_id(config.teacher_weights),
        finetune_epochs=config.finetune_epochs,
        finetune_learning_rate=config.finetune_learning_rate,
        recipes=sorted(config.finetune_recipes(dataset.selection == "cv")),
        **_precision_key(config),
    )
    keys["teacher"] = teacher
    if config.distills:
        # --student-size auto: the choice also rests on the gate's budgets and on int8 files
        # timed with these threads (on this machine: the cache is local).
        size_choice = dict(drop=config.max_accuracy_drop, latency=config.max_latency_ms, threads=config.threads,
                           io=str(config.io_dtype)) if config.chooses_student_size else {}
        student_head = stage_key(
            "student_head", **common, **head, model=config.student, size=config.student_size, weights=_weights_id(config.student_weights),
            **size_choice,
        )
        training = dict(head=student_head, epochs=config.distill_epochs, learning_rate=config.distill_learning_rate)
        keys["student_head"] = student_head
        keys["student"] = stage_key(
            "student", **training, teacher=teacher, temperature=config.temperature, alpha=config.alpha, unlabeled=unlabeled_hash,
            recipes=sorted(config.distill_recipes(dataset.selection == "cv")),
        )
        keys["baseline"] = stage_key("baseline", **training)
    return _deployment_keys(config, keys, keys["student" if config.distills else "teacher"], unlabeled_hash)


def _deployment_keys(config: CompileConfig, keys: dict[str, str], deployed: str, unlabeled_hash: str | None) -> dict[str, str]:
    """The adaptation's key (when one runs) and the float exports', from the deployed model's key:
    the exports depend only on the deployed (and adapted) model, so a replay that changes only
    the quantization takes them, verified once already, from the cache."""
    keys["export"] = stage_key("export", model=deployed)
    if config.unlabeled is not None and config.adapt != "none":
        target_val = Path(config.target_val) if config.target_val else None
        keys["adapt"] = stage_key(
            "adapt",
            model=deployed,
            unlabeled=unlabeled_hash,
            method=config.adapt,
            auto_default=AUTO_WITHOUT_TARGET_VAL.value if config.adapt == "auto" else None,
            target_val=hash_files([p for p in sorted(target_val.rglob("*")) if p.is_file()], target_val) if target_val else None,
            epochs=config.adapt_epochs,
            max_drop=config.max_accuracy_drop,
            seed=config.seed,
        )
        keys["export"] = stage_key("export", model=keys["export"], adapted=keys["adapt"])
    return keys


def _precision_key(config: CompileConfig) -> dict:
    """The teacher's training precision, for its cache key: bf16 trains a different model."""
    from edgetl.compiler.spec.precision import MIXED_POLICY, use_bf16

    return {"precision": MIXED_POLICY} if use_bf16(config.mixed_precision, get_config(config.teacher))[0] else {}


def _weights_id(weights: str) -> str:
    """A weights option as it matters for caching: a file by its content, a name by itself."""
    path = Path(weights)
    return hash_files([path], path.parent) if path.is_file() else weights
