"""The optimisation stage: quantization and pruning candidates, measured, gated and chosen.

From the float model to deploy, it builds candidate files:
  TFLite  fp32, fp16, dynamic, int8 (post-training, calibrated on a class-balanced sample of
          the training split); int8-qat (quantization-aware training, with the distillation loss
          when a teacher exists) when asked for, or when post-training int8 fails the gate;
          with --prune S: the pruned model as fp32 and, pruning-preserving QAT, as int8.
  ONNX    fp32, int8 (ONNX Runtime static QDQ, per channel, the same calibration images),
          fp16 for TensorRT targets.
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

from edgetl.compiler.progress import console, progress_bar

VARIANTS_DIR = "variants"
LATENCY_TIE = 0.15  # p50s this close count as equal when choosing (measurement noise here)
# Fallback order when a pinned precision fails the accuracy gate.
FALLBACK = {"int8": ["int8-qat", "fp16", "fp32"], "dynamic": ["fp16", "fp32"], "int8-qat": ["fp16", "fp32"], "fp16": ["fp32"]}


@dataclasses.dataclass
class Candidate:
    name: str  # "int8", "int8-qat", "fp16", "fp32-pruned50", ...
    format: str  # "tflite" or "onnx"
    precision: str  # fp32, fp16, dynamic, int8
    path: Path
    origin: str  # how it was made, in words
    sparsity: float | None = None
    val_accuracy: float | None = None
    test_probs: np.ndarray | None = None
    latency_p50_ms: float | None = None
    io: dict | None = None
    gate: str = ""  # "passed" or why it failed
    # Test probabilities of the Keras model the file was converted from, when that is not the
    # float model (a pruned or clustered copy): parity is checked against it, not the original.
    reference_probs: np.ndarray | None = None
    reference: str = "float Keras model"

    @property
    def file(self) -> str:
        return f"{VARIANTS_DIR}/{self.path.name}"

    @property
    def pruned(self) -> bool:
        return bool(self.sparsity)


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


class Optimizer:
    """Builds and measures candidates for one float model; `choose` applies the gate."""

    def __init__(self, *, float_model, teacher_model, train_views, config, images, size: int, out: Path, threads: int, calibration=None):
        self.float_model = float_model
        self.teacher_model = teacher_model  # float Keras teacher for distillation during QAT/pruning, or None
        self.train_views = train_views  # (pixels, labels) as the distillation stage trains on
        self.config = config
        self.images = images
        self.size = size
        self.folder = Path(out) / VARIANTS_DIR
        self.threads = threads
        self.candidates: list[Candidate] = []
        self.trained: dict[str, dict] = {}  # QAT / pruning fine-tuning records, for the report
        self._calibration = calibration  # None: a class-balanced sample of the training split
        self._reference_probs: dict[int, np.ndarray] = {}

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

    def _source(self, candidate: Candidate, model, suffix: str) -> Candidate:
        """Record that `candidate` was converted from `model` (the copy that `suffix` names, e.g.
        "-pruned50") when that is not the float model, with its test probabilities for parity."""
        if model is not None and model is not self.float_model:
            if id(model) not in self._reference_probs:
                x_test, _ = self.images.get("test", self.size)
                # A batch at a time: the test images may be on disk (compiler/data/image_store.py).
                batch = self.config.batch_size
                probs = np.concatenate([model.predict(x_test[i : i + batch].astype(np.float32), batch_size=batch, verbose=0)
                                        for i in range(0, len(x_test), batch)])
                self._reference_probs[id(model)] = probs
            candidate.reference_probs = self._reference_probs[id(model)]
            candidate.reference = f"{suffix.strip('-') or 'derived'} Keras model"
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
            self._add(Candidate("fp32", fmt, "fp32", Path(path), "float export, checked against Keras"))

    def add_ptq(self, model=None, suffix: str = "", sparsity: float | None = None, precisions=("fp16", "dynamic", "int8")):
        from edgetl.compiler.compression.quantize import convert_tflite

        source = model
        model = model or self.float_model
        for precision in precisions:
            calibration = self.calibration if precision == "int8" else None
            io_dtype = self.config.io_dtype if precision == "int8" else "float32"
            with progress_bar(f"TFLite {precision}{suffix}", 1) as advance:
                data = convert_tflite(model, precision, calibration=calibration, io_dtype=io_dtype)
                advance()
            name = f"{precision}{suffix}"
            candidate = Candidate(name, "tflite", precision, self.folder / f"model.{name}.tflite", "post-training quantization", sparsity)
            self._add(self._source(candidate, source, suffix), data)

    def add_onnx_int8(self, float_onnx: Path, name: str = "int8", sparsity: float | None = None, model=None):
        """ONNX Runtime static QDQ of `float_onnx`; model: the Keras model it was exported from,
        when that is not the float model (a pruned copy)."""
        from edgetl.compiler.compression.quantize import quantize_onnx

        path = self.folder / f"model.{name}.onnx"
        with progress_bar(f"ONNX {name} (static QDQ)", 1) as advance:
            quantize_onnx(float_onnx, path, self.calibration, per_channel=True)
            advance()
        candidate = Candidate(name, "onnx", "int8", path, "ONNX Runtime static QDQ, per channel", sparsity)
        return self._add(self._source(candidate, model, name.removeprefix("int8")))

    def add_onnx_compressed(self, model, suffix: str, sparsity: float | None):
        """A pruned (and clustered) model as ONNX: the float export, then its int8 QDQ file.

        The float file is an intermediate, not a candidate (the pruned fp32 TFLite already shows
        what pruning costs in float); it is written beside the variants and removed."""
        from edgetl.compiler.export.convert import export_onnx

        float_onnx = export_onnx(model, self.folder / f".model.fp32{suffix}.onnx")
        try:
            return self.add_onnx_int8(float_onnx, f"int8{suffix}", sparsity, model=model)
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
        return self._add(Candidate("fp16", "onnx", "fp16", path, "fp16 weights and compute, float32 I/O"))

    def add_qat(self, model=None, suffix: str = "", sparsity: float | None = None, preserve: str | None = None):
        """QAT fine-tuning, then a full-integer TFLite. preserve: None, "pruning" (PQAT: the
        zeros stay) or "clusters" (PCQAT: the zeros and the shared values stay)."""
        from edgetl.compiler.compression import compress
        from edgetl.compiler.compression.quantize import convert_tflite

        model = model or self.float_model
        make, what = {
            None: (compress.quantize_aware, "QAT"),
            "pruning": (compress.prune_preserving_qat, "pruning-preserving QAT"),
            "clusters": (compress.cluster_preserving_qat, "pruning- and cluster-preserving QAT"),
        }[preserve]
        source = model
        qat = make(model, self.calibration, batch_size=self.config.batch_size)
        label = what + (" + distillation" if self.teacher_model else "")
        result = self._fine_tune(qat, self.config.qat_epochs, self.config.qat_learning_rate, what)
        name = f"int8-qat{suffix}"  # with a pruning suffix it is pruning-preserving QAT (see origin)
        self.trained[name] = result.to_json()
        with progress_bar(f"TFLite {name}", 1) as advance:
            data = convert_tflite(qat, "int8", calibration=self.calibration, io_dtype=self.config.io_dtype)
            advance()
        candidate = Candidate(name, "tflite", "int8", self.folder / f"model.{name}.tflite", label, sparsity)
        return self._add(self._source(candidate, source, suffix), data)

    def _fine_tune(self, model, epochs: int, learning_rate: float, label: str):
        """compress.fine_tune on the train views, distilled from the teacher when there is one."""
        from edgetl.compiler.compression import compress

        distilled = self.teacher_model is not None
        return compress.fine_tune(
            model,
            teacher=self.teacher_model,
            train_views=self.train_views,
            val=self.images.get("val", self.size),
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=self.config.batch_size,
            temperature=self.config.temperature,
            alpha=self.config.alpha if distilled else 0.0,
            seed=self.config.seed,
            label=label + (" + distillation" if distilled else ""),
        )

    def pruned_model(self):
        """Magnitude pruning to the target sparsity (fine-tuned, distilled), stripped."""
        from edgetl.compiler.compression import compress

        views = self.train_views
        begin, end = compress.pruning_steps(len(views[0]), self.config.batch_size, ramp_epochs=max(1, self.config.prune_epochs / 2))
        pruned = compress.prune(self.float_model, self.config.prune, begin, end)
        result = self._fine_tune(pruned, self.config.prune_epochs, self.config.prune_learning_rate, f"pruning to {self.config.prune:.0%}")
        self.trained["pruning"] = result.to_json()
        stripped = compress.strip(pruned)
        return stripped, compress.sparsity_of(stripped)

    def clustered_model(self, model):
        """Sparsity-preserving weight clustering of a pruned model (fine-tuned, distilled), stripped."""
        from edgetl.compiler.compression import compress

        clustered = compress.cluster(model, self.config.cluster)
        result = self._fine_tune(clustered, self.config.cluster_epochs, self.config.cluster_learning_rate, f"clustering to {self.config.cluster} values")
        self.trained["clustering"] = result.to_json()
        return compress.strip_clusters(clustered)

    def has(self, name: str, fmt: str = "tflite") -> bool:
        return any(c.name == name and c.format == fmt for c in self.candidates)

    def ensure(self, name: str, model=None, suffix: str = "", sparsity: float | None = None, preserve: str | None = None) -> None:
        """Build TFLite candidate `name` (fp16, dynamic, int8, int8-qat) unless it exists.
        preserve: what QAT must keep (add_qat); default: the zeros when `sparsity` is given."""
        if self.has(name + suffix):
            return
        if name == "int8-qat":
            self.add_qat(model, suffix, sparsity, preserve=preserve or ("pruning" if sparsity else None))
        elif name != "fp32":
            self.add_ptq(model, suffix, sparsity, precisions=(name,))

    def settle(self, pinned: str, model=None, suffix: str = "", sparsity: float | None = None) -> None:
        """Build the pinned precision, then each fallback in turn until one passes the gate."""
        for name in [pinned] + FALLBACK.get(pinned, []):
            self.ensure(name, model, suffix, sparsity)
            self.apply_gate()
            built = [c for c in self.candidates if c.format == "tflite" and c.name == name + suffix]
            if any(c.gate == "passed" for c in built):
                return

    def _gate_images(self) -> str:
        """The images the gate compares on: the val split, or (cross-validated compiles carve
        none) the training images, where it checks fidelity to fp32 rather than accuracy."""
        if self.images is None or self.images.held_out["val"]:  # tests measure candidates they built themselves
            return "val"
        return "the training images (no val split under cross-validation)"

    # -- measurement --------------------------------------------------------------------
    def _measure(self, c: Candidate) -> None:
        from edgetl.runtime import open_session

        session = open_session(c.path, threads=self.threads)
        x_val, y_val = self.images.get("val", self.size)
        x_test, _ = self.images.get("test", self.size)
        c.val_accuracy = float(np.mean(session.predict(x_val, self.config.batch_size).argmax(1) == y_val))
        c.test_probs = session.predict(x_test, self.config.batch_size)
        # A first figure for the console and the fallback steps: time_all() measures every
        # candidate again (interleaved) and replaces it, so a few calls are enough here
        # (30 calls of a ResNet50 fp32 file took 7 s per file on a loaded machine).
        c.latency_p50_ms = measure_latency(session, x_test[0], runs=5, warmup=1)
        if c.format == "tflite":
            from edgetl.compiler.compression.quantize import tflite_io_details

            c.io = tflite_io_details(c.path)
        console.print(
            f"    {c.file}: val accuracy {c.val_accuracy:.2%}, p50 {c.latency_p50_ms:.2f} ms, {c.path.stat().st_size / 1e6:.2f} MB"
        )

    def time_all(self, rounds: int = 3, runs: int = 30) -> None:
        """Time every candidate again in interleaved rounds and keep each one's best p50.

        Interleaving spreads a burst of load from elsewhere over all candidates instead of
        landing on one, and the best-of-rounds median discards the rounds that were disturbed.
        """
        from edgetl.runtime import open_session

        x_test, _ = self.images.get("test", self.size)
        sessions = [(c, open_session(c.path, threads=self.threads)) for c in self.candidates]
        best = {id(c): float("inf") for c in self.candidates}
        with progress_bar("latency (interleaved rounds)", rounds * len(sessions)) as advance:
            for _ in range(rounds):
                for c, session in sessions:
                    best[id(c)] = min(best[id(c)], measure_latency(session, x_test[0], runs=runs))
                    advance()
        for c in self.candidates:
            c.latency_p50_ms = best[id(c)]

    # -- the gate and the choice ----------------------------------------------------------
    def float_val_accuracy(self, fmt: str) -> float:
        return next(c.val_accuracy for c in self.candidates if c.format == fmt and c.name == "fp32")

    def apply_gate(self) -> None:
        drop = self.config.max_accuracy_drop / 100.0
        for c in self.candidates:
            floor = self.float_val_accuracy(c.format) - drop
            if c.val_accuracy + 1e-9 >= floor:
                c.gate = "passed"
            else:
                c.gate = (
                    f"failed: val accuracy {c.val_accuracy:.2%} is {100 * (self.float_val_accuracy(c.format) - c.val_accuracy):.2f} "
                    f"points below fp32 (max {self.config.max_accuracy_drop:g})"
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
                          f"the fastest ({chosen.name}, {chosen.latency_p50_ms:.2f} ms) is deployed")
            return chosen, note + f"NO file within the accuracy gate meets the {budget:g} ms p50 budget (--max-latency-ms); " + why
        chosen, why = self._choose(fmt, pool, passing, pinned)
        if budget is not None:
            within = "within" if chosen.latency_p50_ms <= budget else "OVER"
            why += f"; {chosen.latency_p50_ms:.2f} ms p50 is {within} the {budget:g} ms budget (the budget chooses only with --quantize auto)"
        return chosen, note + why

    def _choose(self, fmt: str, pool: list[Candidate], passing: list[Candidate], pinned: str | None) -> tuple[Candidate, str]:
        if pinned:
            wanted = [pinned] + FALLBACK.get(pinned, [])
            tried = []
            for name in wanted:
                # A pruned file counts as the precision it computes in (pruning-preserving QAT is
                # how a pruned model becomes int8).
                match = [c for c in passing if c.name.split("-pruned")[0] == name or (c.pruned and c.precision == name)]
                if match:
                    chosen = min(match, key=lambda c: c.latency_p50_ms)
                    if tried:
                        return chosen, f"{pinned} was asked for but {'; '.join(tried)}; {chosen.name} is the next option that passes"
                    return chosen, f"{chosen.name} as asked for; within {points(self.config.max_accuracy_drop)} of fp32 on {self._gate_images()}"
                failed = [c for c in pool if c.name.split("-pruned")[0] == name]
                tried.append(f"{name} {failed[0].gate}" if failed else f"{name} was not built")
            fp32 = next(c for c in pool if c.name == "fp32")
            return fp32, "no quantized option passed the accuracy gate (" + "; ".join(tried) + "): fp32 is deployed"
        best = min(c.latency_p50_ms for c in passing)
        # Latencies within LATENCY_TIE of the best are a tie on a shared machine: the smallest
        # file among them wins, so noise never trades a 4x larger download for nothing.
        tied = [c for c in passing if c.latency_p50_ms <= best * (1 + LATENCY_TIE)]
        fastest = min(tied, key=lambda c: (c.path.stat().st_size, c.latency_p50_ms))
        others = ", ".join(f"{c.name} {c.latency_p50_ms:.2f} ms" for c in sorted(passing, key=lambda c: c.latency_p50_ms) if c is not fastest)
        failed = [f"{c.name} ({c.gate})" for c in pool if c.gate != "passed"]
        why = f"fastest {fmt} within {points(self.config.max_accuracy_drop)} of fp32 on {self._gate_images()}: {fastest.latency_p50_ms:.2f} ms p50"
        if len(tied) > 1:
            why += f" (the smallest of those within {LATENCY_TIE:.0%} of the best p50)"
        if others:
            why += f" (others that passed: {others})"
        if failed:
            why += "; rejected by the gate: " + ", ".join(failed)
        return fastest, why
