"""The optimisation stage: quantization and pruning candidates, measured, gated and chosen.

From the float model to deploy, it builds candidate files:
  TFLite  fp32, fp16, dynamic, int8 (post-training, calibrated on a class-balanced sample of
          the training split); int8-qat (quantization-aware training, with the distillation loss
          when a teacher exists) when asked for, or when post-training int8 fails the gate;
          with --prune S: the pruned model as fp32 and, pruning-preserving QAT, as int8.
  ONNX    fp32, int8 (ONNX Runtime static QDQ, per channel, the same calibration images),
          fp16 for TensorRT targets.
Under a tf.distribute strategy (--strategy), QAT, pruning and clustering fine-tune across its
replicas like the training stages, and each trained model is copied back to an ordinary Keras
model before it is converted.
Every candidate is run in its runtime on the validation and test splits and timed at batch 1
on this machine. The accuracy gate compares validation accuracy (the test split never decides
anything) with the float model's; among the candidates within `max_accuracy_drop` points the
fastest is chosen, unless the user pinned a precision: then that one, or, when it fails the
gate, the next option (QAT, then fp16, then fp32), and the report says what was tried and why.
"""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np

from edgetl.compiler.evaluation.stats import describe_accuracy
from edgetl.compiler.progress import console, progress_bar
from edgetl.compiler.spec.modes import Precision

VARIANTS_DIR = "variants"
LATENCY_TIE = 0.15  # p50s this close count as equal when choosing (measurement noise here)
# Fallback order when a pinned precision fails the accuracy gate, by Candidate.kind.
FALLBACK = {"int8": ["int8-qat", "fp16", "fp32"], "dynamic": ["fp16", "fp32"], "int8-qat": ["fp16", "fp32"], "fp16": ["fp32"]}


@dataclasses.dataclass(frozen=True)
class Compressed:
    """A stripped Keras model made smaller than the float model, and how: pruned to `sparsity`
    (measured), and with `clusters` shared values per kernel when also clustered (0: not)."""

    model: object
    sparsity: float
    clusters: int = 0

    @property
    def preserve(self) -> str:
        """What QAT of this model must keep (Optimizer.add_qat)."""
        return "clusters" if self.clusters else "pruning"

    @property
    def label(self) -> str:
        return compression_label(self.sparsity, self.clusters)


def _compression_fields(compressed: Compressed | None) -> dict:
    """A candidate's sparsity and clusters when made from `compressed` (None: the float model)."""
    return {"sparsity": compressed.sparsity, "clusters": compressed.clusters} if compressed else {"sparsity": None, "clusters": 0}


def compression_label(sparsity: float | None, clusters: int = 0) -> str:
    """"pruned50", "pruned50-clustered16", or "" for a model that was not compressed."""
    return "-".join(([f"pruned{round(sparsity * 100)}"] if sparsity is not None else []) + ([f"clustered{clusters}"] if clusters else []))


def candidate_name(precision: str, qat: bool = False, sparsity: float | None = None, clusters: int = 0) -> str:
    """"int8", "int8-qat", "fp32-pruned50", "int8-qat-pruned50-clustered16": the file's name in
    variants/ and in the report, made from the candidate's fields (never parsed back)."""
    return "-".join(part for part in (str(precision), "qat" if qat else "", compression_label(sparsity, clusters)) if part)


@dataclasses.dataclass
class Candidate:
    format: str  # "tflite" or "onnx"
    precision: Precision  # what it computes in: fp32, fp16, dynamic, int8
    path: Path
    origin: str  # how it was made, in words
    qat: bool = False  # int8 from quantization-aware training (pruning-/cluster-preserving when compressed)
    sparsity: float | None = None  # measured share of zero weights, when converted from a pruned model
    clusters: int = 0  # shared values per kernel, when the pruned model was also clustered
    val_accuracy: float | None = None
    val_images: int = 0  # the gate's images (val, or the training images under cross-validation)
    test_probs: np.ndarray | None = None
    latency_p50_ms: float | None = None
    io: dict | None = None
    gate: str = ""  # "passed" or why it failed
    # Test probabilities of the Keras model the file was converted from, when that is not the
    # float model (a pruned or clustered copy): parity is checked against it, not the original.
    reference_probs: np.ndarray | None = None
    reference: str = "float Keras model"

    def __post_init__(self):
        self.precision = Precision(self.precision)

    @property
    def kind(self) -> str:
        """The precision and method, whatever the model was compressed to: "int8", "int8-qat", ..."""
        return candidate_name(self.precision, self.qat)

    @property
    def name(self) -> str:
        return candidate_name(self.precision, self.qat, self.sparsity, self.clusters)

    @property
    def file(self) -> str:
        return f"{VARIANTS_DIR}/{self.path.name}"

    @property
    def pruned(self) -> bool:
        return self.sparsity is not None


def points(value: float) -> str:
    """`1 point`, `0.5 points`, `2 points`: accuracy points in words."""
    return f"{value:g} point" + ("" if value == 1 else "s")


def gzip_size(path: Path) -> int:
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=9))


def measure_latency(session, image: np.ndarray, runs: int = 30, warmup: int = 5) -> float:
    """p50 in ms of one image at batch 1, in the candidate's own runtime (in-process)."""
    from edgetl.runtime.measure import time_calls

    tensor = session.prepare(image[None])
    return float(time_calls(lambda: session.invoke(tensor), warmup=warmup, runs=runs).stats()["p50_ms"])


def best_p50_interleaved(sessions: list[tuple[object, np.ndarray]], label: str, rounds: int = 3, runs: int = 30) -> list[float]:
    """Each (session, image)'s best p50 in ms over `rounds` rounds in which they take turns.

    Interleaving spreads a burst of load from elsewhere over all files instead of landing on
    one, and the best-of-rounds median discards the rounds that were disturbed. Used for the
    optimize stage's candidates and for --student-size auto's sizes.
    """
    best = [float("inf")] * len(sessions)
    with progress_bar(label, rounds * len(sessions)) as advance:
        for _ in range(rounds):
            for i, (session, image) in enumerate(sessions):
                best[i] = min(best[i], measure_latency(session, np.asarray(image), runs=runs))
                advance()
    return best


class Optimizer:
    """Builds and measures candidates for one float model; `choose` applies the gate."""

    def __init__(self, *, float_model, teacher_model, train_views, config, images, size: int, out: Path, threads: int, calibration=None,
                 strategy=None, val_seen: bool = False):
        self.float_model = float_model
        self.teacher_model = teacher_model  # float Keras teacher for distillation during QAT/pruning, or None
        self.train_views = train_views  # (pixels, labels) as the distillation stage trains on
        # The float model's head was refit on the val images too (compiler/stages/trained.py's
        # refit_kept_probe), and so were train_views: the gate on val then checks fidelity to fp32.
        self.val_seen = val_seen
        self.config = config
        self.images = images
        self.size = size
        self.folder = Path(out) / VARIANTS_DIR
        self.threads = threads
        self.candidates: list[Candidate] = []
        self.trained: dict[str, dict] = {}  # QAT / pruning fine-tuning records, for the report
        self._calibration = calibration  # None: a class-balanced sample of the training split
        self._reference_probs: dict[int, np.ndarray] = {}
        # The tf.distribute strategy the training stages ran under (None: the default one
        # device). QAT, pruning and clustering fine-tune under it too: `config` is then already
        # scaled for its replicas (pipeline._scaled_for: global batch, learning rates x R).
        from edgetl.compiler.training.distribution import is_default

        self.strategy = strategy
        self._distributed = strategy is not None and not is_default(strategy)  # asked outside any scope
        self._teacher_in_strategy = None

    # -- inputs -------------------------------------------------------------------------
    @property
    def calibration(self) -> np.ndarray:
        if self._calibration is None:
            from edgetl.compiler.compression.quantize import calibration_sample

            x, y = self.images.get("train", self.size)
            self._calibration = calibration_sample(x, y, self.config.calibration_size, self.config.seed)
        return self._calibration

    @property
    def calibration_images(self) -> int:
        """Images that calibrated int8 (0 if nothing was calibrated): fewer than
        --calibration-size when the training split holds fewer."""
        return 0 if self._calibration is None else len(self._calibration)

    def _candidate(self, fmt: str, precision: str, origin: str, compressed: Compressed | None = None, qat: bool = False) -> Candidate:
        """A new candidate, its file named after its fields, converted from `compressed` (or the float model)."""
        what = dict(qat=qat, **_compression_fields(compressed))
        path = self.folder / f"model.{candidate_name(precision, **what)}.{fmt}"
        candidate = Candidate(fmt, precision, path, origin, **what)
        return self._source(candidate, compressed.model if compressed else None)

    def _source(self, candidate: Candidate, model) -> Candidate:
        """Record that `candidate` was converted from `model` (a pruned or clustered copy) when
        that is not the float model, with its test probabilities for parity."""
        if model is not None and model is not self.float_model:
            if id(model) not in self._reference_probs:
                x_test, _ = self.images.get("test", self.size)
                # A batch at a time: the test images may be on disk (compiler/data/image_store.py).
                batch = self.config.batch_size
                probs = np.concatenate([model.predict(x_test[i : i + batch].astype(np.float32), batch_size=batch, verbose=0)
                                        for i in range(0, len(x_test), batch)])
                self._reference_probs[id(model)] = probs
            candidate.reference_probs = self._reference_probs[id(model)]
            candidate.reference = f"{compression_label(candidate.sparsity, candidate.clusters) or 'derived'} Keras model"
        return candidate

    # -- candidates ---------------------------------------------------------------------
    def _add(self, candidate: Candidate, data: bytes | None = None) -> Candidate:
        if data is not None:
            from edgetl.atomic import atomic_write_bytes

            atomic_write_bytes(candidate.path, data)
        self._measure(candidate)
        self.candidates.append(candidate)
        return candidate

    def add_float(self, tflite: Path, onnx: Path) -> None:
        """The verified float exports (already in the variants folder) as the fp32 candidates."""
        for path, fmt in ((tflite, "tflite"), (onnx, "onnx")):
            self._add(Candidate(fmt, "fp32", Path(path), "float export, checked against Keras"))

    def add_ptq(self, compressed: Compressed | None = None, precisions=("fp16", "dynamic", "int8")):
        """Post-training conversions of the float model, or of `compressed`."""
        from edgetl.compiler.compression.quantize import convert_tflite

        model = compressed.model if compressed else self.float_model
        for precision in precisions:
            calibration = self.calibration if precision == "int8" else None
            io_dtype = self.config.io_dtype if precision == "int8" else "float32"
            if precision != "fp32":
                origin = "post-training quantization"
            else:  # a pruned or clustered model's fp32 file: converted here, but nothing in it is quantized
                origin = "float export of the pruned or clustered model" if compressed else "float export of the model"
            candidate = self._candidate("tflite", precision, origin, compressed)
            with progress_bar(f"TFLite {candidate.name}", 1) as advance:
                data = convert_tflite(model, precision, calibration=calibration, io_dtype=io_dtype)
                advance()
            self._add(candidate, data)

    def add_onnx_int8(self, float_onnx: Path, compressed: Compressed | None = None):
        """ONNX Runtime static QDQ of `float_onnx`; compressed: the model it was exported from,
        when that is not the float model (a pruned copy)."""
        from edgetl.compiler.compression.quantize import quantize_onnx

        candidate = self._candidate("onnx", "int8", "ONNX Runtime static QDQ, per channel", compressed)
        with progress_bar(f"ONNX {candidate.name} (static QDQ)", 1) as advance:
            quantize_onnx(float_onnx, candidate.path, self.calibration, per_channel=True)
            advance()
        return self._add(candidate)

    def add_onnx_compressed(self, compressed: Compressed):
        """A pruned (and clustered) model as ONNX: the float export, then its int8 QDQ file.

        The float file is an intermediate, not a candidate (the pruned fp32 TFLite already shows
        what pruning costs in float); it is written beside the variants and removed."""
        from edgetl.compiler.export.convert import export_onnx

        float_onnx = export_onnx(compressed.model, self.folder / f".model.fp32-{compressed.label}.onnx")
        try:
            return self.add_onnx_int8(float_onnx, compressed)
        finally:
            float_onnx.unlink(missing_ok=True)

    def add_onnx_fp16(self, float_onnx: Path):
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        from edgetl.atomic import atomic_path

        path = self.folder / "model.fp16.onnx"
        converted = convert_float_to_float16(onnx.load(str(float_onnx)), keep_io_types=True)
        with atomic_path(path) as tmp:
            onnx.save(converted, str(tmp))
        return self._add(Candidate("onnx", "fp16", path, "fp16 weights and compute, float32 I/O"))

    def add_qat(self, compressed: Compressed | None = None):
        """QAT fine-tuning, then a full-integer TFLite. Of a compressed model, what it keeps:
        pruning-preserving QAT (PQAT: the zeros stay), or cluster-preserving (PCQAT: the zeros
        and the shared values stay) when it was also clustered."""
        from edgetl.compiler.compression import compress
        from edgetl.compiler.compression.quantize import convert_tflite

        model = compressed.model if compressed else self.float_model
        preserve = compressed.preserve if compressed else None
        make, what = {
            None: (compress.quantize_aware, "QAT"),
            "pruning": (compress.prune_preserving_qat, "pruning-preserving QAT"),
            "clusters": (compress.cluster_preserving_qat, "pruning- and cluster-preserving QAT"),
        }[preserve]
        with self._scope():
            qat = make(model, self.calibration, batch_size=self.config.batch_size)
        label = what + (" + distillation" if self.teacher_model else "")
        result = self._fine_tune(qat, self.config.qat_epochs, self.config.qat_learning_rate, what)
        name = candidate_name("int8", qat=True, **_compression_fields(compressed))
        self.trained[name] = result.to_json()
        if self._distributed:
            # The converter gets an ordinary model: the same QAT wrapping built outside the
            # strategy, with the trained weights (quantization ranges included).
            plain = make(model, None)
            plain.set_weights(qat.get_weights())
            qat = plain
        with progress_bar(f"TFLite {name}", 1) as advance:
            data = convert_tflite(qat, "int8", calibration=self.calibration, io_dtype=self.config.io_dtype)
            advance()
        return self._add(self._candidate("tflite", "int8", label, compressed, qat=True), data)

    # -- the distribution strategy ------------------------------------------------------
    def _scope(self):
        """Where a tfmot-wrapped model is built: inside the strategy's scope, so its variables
        are mirrored across the replicas (a no-op on one device)."""
        import contextlib

        return self.strategy.scope() if self._distributed else contextlib.nullcontext()

    def _teacher(self):
        """The distillation teacher as fine-tuning reads it: under a distribution strategy a copy
        built inside its scope (the pipeline's teacher is a plain model for export), made once."""
        if self.teacher_model is None or not self._distributed:
            return self.teacher_model
        if self._teacher_in_strategy is None:
            from edgetl.compiler.compression import compress

            with self._scope():
                self._teacher_in_strategy = compress.copy_model(self.teacher_model)
        return self._teacher_in_strategy

    def _fine_tune(self, model, epochs: int, learning_rate: float, label: str):
        """compress.fine_tune on the train views, distilled from the teacher when there is one,
        under the strategy `model` was built in (self._scope())."""
        from edgetl.compiler.compression import compress

        distilled = self.teacher_model is not None
        return compress.fine_tune(
            model,
            strategy=self.strategy if self._distributed else None,
            teacher=self._teacher(),
            train_views=self.train_views,
            val=self.images.get("val", self.size),
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=self.config.batch_size,
            temperature=self.config.temperature,
            alpha=self.config.alpha if distilled else 0.0,
            seed=self.config.seed,
            label=label + (" + distillation" if distilled else ""),
            keep="last",  # the gate reads val: nothing it judges was chosen on it (fine_tune)
        )

    def pruned_model(self) -> Compressed:
        """Magnitude pruning to the target sparsity (fine-tuned, distilled), stripped."""
        from edgetl.compiler.compression import compress

        views = self.train_views
        begin, end = compress.pruning_steps(len(views[0]), self.config.batch_size, ramp_epochs=max(1, self.config.prune_epochs / 2))
        with self._scope():
            pruned = compress.prune(self.float_model, self.config.prune, begin, end)
        result = self._fine_tune(pruned, self.config.prune_epochs, self.config.prune_learning_rate, f"pruning to {self.config.prune:.0%}")
        self.trained["pruning"] = result.to_json()
        stripped = compress.strip(pruned)  # built outside the strategy: an ordinary model
        return Compressed(stripped, compress.sparsity_of(stripped))

    def clustered_model(self, pruned: Compressed) -> Compressed:
        """Sparsity-preserving weight clustering of a pruned model (fine-tuned, distilled), stripped."""
        from edgetl.compiler.compression import compress

        with self._scope():
            clustered = compress.cluster(pruned.model, self.config.cluster)
        result = self._fine_tune(clustered, self.config.cluster_epochs, self.config.cluster_learning_rate, f"clustering to {self.config.cluster} values")
        self.trained["clustering"] = result.to_json()
        # strip_clusters builds outside the strategy: an ordinary model.
        return Compressed(compress.strip_clusters(clustered), pruned.sparsity, self.config.cluster)

    def _built(self, kind: str, compressed: Compressed | None = None, fmt: str = "tflite") -> list[Candidate]:
        """The candidates of one kind ("int8-qat", ...) made from the float model, or from `compressed`."""
        what = _compression_fields(compressed)
        return [c for c in self.candidates if c.format == fmt and c.kind == kind and (c.sparsity, c.clusters) == (what["sparsity"], what["clusters"])]

    def has(self, kind: str, fmt: str = "tflite") -> bool:
        """Whether a candidate of `kind` ("fp16", "int8-qat", ...) was made from the float model."""
        return bool(self._built(kind, fmt=fmt))

    def ensure(self, kind: str, compressed: Compressed | None = None) -> None:
        """Build TFLite candidate `kind` (fp16, dynamic, int8, int8-qat) of the float model, or of
        `compressed`, unless it exists."""
        if self._built(kind, compressed):
            return
        if kind == "int8-qat":
            self.add_qat(compressed)
        elif kind != "fp32":
            self.add_ptq(compressed, precisions=(kind,))

    def settle(self, pinned: str, compressed: Compressed | None = None) -> None:
        """Build the pinned precision, then each fallback in turn until one passes the gate."""
        for kind in [pinned] + FALLBACK.get(pinned, []):
            self.ensure(kind, compressed)
            self.apply_gate()
            if any(c.gate == "passed" for c in self._built(kind, compressed)):
                return

    def gates_on_val(self) -> bool:
        return self.images is None or self.images.held_out["val"]  # None: tests measure candidates they built themselves

    def gate_images(self) -> str:
        """The images the gate compares on: the val split, or (cross-validated compiles carve
        none) the training images, where it checks fidelity to fp32 rather than accuracy."""
        if self.gates_on_val():
            return "val (which the refit probe was fit on too)" if self.val_seen else "val"
        return "the training images (no val split under cross-validation)"

    def _gate_accuracy(self) -> str:
        """What the gate's accuracy figure is, for messages: "val accuracy" is wrong under
        cross-validation, where the gate scores the training images."""
        return "val accuracy" if self.gates_on_val() else "accuracy on the training images"

    # -- measurement --------------------------------------------------------------------
    def _measure(self, c: Candidate) -> None:
        from edgetl.runtime import open_session

        session = open_session(c.path, threads=self.threads)
        x_val, y_val = self.images.get("val", self.size)
        x_test, _ = self.images.get("test", self.size)
        c.val_accuracy = float(np.mean(session.predict(x_val, self.config.batch_size).argmax(1) == y_val))
        c.val_images = int(len(y_val))
        c.test_probs = session.predict(x_test, self.config.batch_size)
        # A first figure for the console and the fallback steps: time_all() measures every
        # candidate again (interleaved) and replaces it, so a few calls are enough here
        # (30 calls of a ResNet50 fp32 file took 7 s per file on a loaded machine).
        c.latency_p50_ms = measure_latency(session, x_test[0], runs=5, warmup=1)
        if c.format == "tflite":
            from edgetl.compiler.compression.quantize import tflite_io_details

            c.io = tflite_io_details(c.path)
        console.print(
            f"    {c.file}: {self._gate_accuracy()} {describe_accuracy(c.val_accuracy, len(y_val))}, "
            f"first p50 {c.latency_p50_ms:.2f} ms (timed again below), {c.path.stat().st_size / 1e6:.2f} MB"
        )

    def time_all(self, rounds: int = 3, runs: int = 30) -> None:
        """Time every candidate again (`best_p50_interleaved`) and keep each one's best p50."""
        from edgetl.runtime import open_session

        x_test, _ = self.images.get("test", self.size)
        sessions = [(open_session(c.path, threads=self.threads), x_test[0]) for c in self.candidates]
        for c, p50 in zip(self.candidates, best_p50_interleaved(sessions, "latency (interleaved rounds)", rounds, runs)):
            c.latency_p50_ms = p50

    # -- the gate and the choice ----------------------------------------------------------
    def float_val_accuracy(self, fmt: str) -> float:
        return next(c.val_accuracy for c in self._built("fp32", fmt=fmt))

    def apply_gate(self) -> None:
        drop = self.config.max_accuracy_drop / 100.0
        for c in self.candidates:
            floor = self.float_val_accuracy(c.format) - drop
            if c.val_accuracy + 1e-9 >= floor:
                c.gate = "passed"
            else:
                fp32 = self.float_val_accuracy(c.format)
                said = (lambda a: describe_accuracy(a, c.val_images)) if c.val_images else (lambda a: f"{a:.2%}")
                c.gate = (
                    f"failed: {self._gate_accuracy()} {said(c.val_accuracy)} is {100 * (fp32 - c.val_accuracy):.2f} "
                    f"points below fp32's {said(fp32)} (max {self.config.max_accuracy_drop:g})"
                )

    def choose(self, fmt: str, pinned: str | None, prefer_pruned: bool) -> tuple[Candidate, str]:
        """The deployed candidate of one format, and why, in words."""
        pool = [c for c in self.candidates if c.format == fmt]
        passing = [c for c in pool if c.gate == "passed"]
        note = ""
        if prefer_pruned:
            if any(c.pruned for c in passing):
                passing = [c for c in passing if c.pruned]
            else:
                note = "no pruned candidate passed the accuracy gate, so an unpruned one is deployed; "
        budget = getattr(self.config, "max_latency_ms", None)
        if budget is not None and not pinned:
            # --max-latency-ms: a second gate, on the p50 measured here. When nothing within the
            # accuracy gate meets it, the fastest of those is deployed and the report says so.
            fast = [c for c in passing if c.latency_p50_ms <= budget]
            if fast:
                chosen, why = self._choose(fmt, pool, fast, pinned)
                over = [f"{c.name} {c.latency_p50_ms:.2f} ms" for c in passing if c not in fast]
                why += f"; within the {budget:g} ms p50 budget" + (f" (over it: {', '.join(over)})" if over else "")
                return chosen, note + why
            chosen, why = self._choose(fmt, pool, passing, pinned)
            console.print(f"    no {fmt} file within the accuracy gate meets the {budget:g} ms p50 budget; "
                          f"{chosen.name} ({chosen.latency_p50_ms:.2f} ms), chosen among all files within the gate, is deployed")
            return chosen, note + f"NO file within the accuracy gate meets the {budget:g} ms p50 budget (--max-latency-ms); " + why
        chosen, why = self._choose(fmt, pool, passing, pinned)
        if budget is not None:
            within = "within" if chosen.latency_p50_ms <= budget else "OVER"
            why += (f"; {chosen.latency_p50_ms:.2f} ms p50 is {within} the {budget:g} ms budget (it chooses among the quantized "
                    "files only with --quantize auto)")
        return chosen, note + why

    def _choose(self, fmt: str, pool: list[Candidate], passing: list[Candidate], pinned: str | None) -> tuple[Candidate, str]:
        if pinned:
            wanted = [pinned] + FALLBACK.get(pinned, [])
            tried = []
            for name in wanted:
                # A pruned file counts as the precision it computes in (pruning-preserving QAT is
                # how a pruned model becomes int8).
                match = [c for c in passing if c.kind == name or (c.pruned and c.precision == name)]
                if match:
                    chosen = min(match, key=lambda c: c.latency_p50_ms)
                    if tried:
                        return chosen, f"{pinned} was asked for but {'; '.join(tried)}; {chosen.name} is the next option that passes"
                    # The precision may come from --quantize or from the target's profile: "set", not "asked for".
                    if chosen.kind == "fp32" and not chosen.pruned:
                        return chosen, "fp32, the precision set for this build"
                    return chosen, (f"{chosen.name}, the precision set for this build; within {points(self.config.max_accuracy_drop)} "
                                    f"of fp32 on {self.gate_images()}")
                failed = [c for c in pool if c.kind == name]
                tried.append(f"{name} {failed[0].gate}" if failed else f"{name} was not built")
            fp32 = next(c for c in pool if c.kind == "fp32" and not c.pruned)
            return fp32, "no quantized option passed the accuracy gate (" + "; ".join(tried) + "): fp32 is deployed"
        best = min(c.latency_p50_ms for c in passing)
        # Latencies within LATENCY_TIE of the best are a tie on a shared machine: the smallest
        # file among them wins, so noise never trades a 4x larger download for nothing.
        tied = [c for c in passing if c.latency_p50_ms <= best * (1 + LATENCY_TIE)]
        fastest = min(tied, key=lambda c: (c.path.stat().st_size, c.latency_p50_ms))
        others = ", ".join(f"{c.name} {c.latency_p50_ms:.2f} ms" for c in sorted(passing, key=lambda c: c.latency_p50_ms) if c is not fastest)
        failed = [f"{c.name} ({c.gate})" for c in pool if c.gate != "passed"]
        why = f"fastest {fmt} within {points(self.config.max_accuracy_drop)} of fp32 on {self.gate_images()}: {fastest.latency_p50_ms:.2f} ms p50"
        if len(tied) > 1:
            why += f" (the smallest of those within {LATENCY_TIE:.0%} of the best p50)"
        if others:
            why += f" (others that passed: {others})"
        if failed:
            why += "; rejected by the gate: " + ", ".join(failed)
        return fastest, why
