"""Compression study on real data: what post-training quantization, QAT and pruning cost and buy.

    python -m edgetl.benchmarks.compression_study --student S.keras [--teacher T.keras] \
        --data ../shared/datasets/flowers12 --work /tmp/q/study [--steps ptq,calib,qat,prune,cluster]

Prints (and writes to WORK/results.json) one row per artefact: test accuracy with its 95% Wilson
interval, its change from the float model with the paired (Newcombe) interval, how often its top
class agrees with the float model's (Wilson interval), size on disk, gzip size, LiteRT / ONNX Runtime latency p50 (batch 1,
`--threads` threads, `--runs` timed runs after warm-up). Intermediate models are kept in WORK
so a rerun of one step does not redo the others.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np

import edgetl  # noqa: F401  (legacy Keras before TensorFlow)
from edgetl.compiler.evaluation.stats import accuracy_span, describe_accuracy, paired_difference, points_span, wilson_interval
from edgetl.compiler.spec.config import CompileConfig


def gzip_size(path: Path) -> int:
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=9))


def latency_ms(path: Path, images: np.ndarray, threads: int, runs: int, warmup: int = 10) -> float:
    from edgetl.runtime import open_session

    session = open_session(path, threads=threads)
    tensor = session.prepare(images[:1]) if hasattr(session, "prepare") else images[:1]
    if hasattr(session, "_resize_batch"):
        session._resize_batch(1)  # noqa: SLF001
    for _ in range(warmup):
        session.invoke(tensor)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.invoke(tensor)
        times.append(time.perf_counter() - t)
    return 1000.0 * float(np.median(times))


def accuracy(path: Path, x: np.ndarray, y: np.ndarray, threads: int) -> tuple[float, np.ndarray]:
    from edgetl.runtime import open_session

    probs = open_session(path, threads=threads).predict(x, batch_size=32)
    return float(np.mean(probs.argmax(1) == y)), probs


class Study:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.results_path = self.work / "results.json"
        self.results = json.loads(self.results_path.read_text()) if self.results_path.exists() else {}
        self._load()

    def _load(self):
        from edgetl.compiler.data.datasets import load_images, scan_dataset
        from edgetl.runtime.keras_model import load_keras_model

        a = self.args
        self.student = load_keras_model(Path(a.student))
        self.teacher = load_keras_model(Path(a.teacher)) if a.teacher else None
        size = self.student.input_shape[1]
        view = max(size, self.teacher.input_shape[1] if self.teacher else size)
        ds = scan_dataset(a.data, seed=a.seed)
        self.x_train, self.y_train = load_images(ds.splits["train"], size)
        self.x_view = load_images(ds.splits["train"], view)[0] if view != size else self.x_train
        self.x_val, self.y_val = load_images(ds.splits["val"], size)
        self.x_test, self.y_test = load_images(ds.splits["test"], size)
        probs = self.student.predict(self.x_test.astype(np.float32), batch_size=32, verbose=0)
        self.float_acc = float(np.mean(probs.argmax(1) == self.y_test))
        self.float_probs = probs
        print(f"float student: test accuracy {describe_accuracy(self.float_acc, len(self.y_test))}; "
              f"train {len(self.y_train)}, val {len(self.y_val)}")

    def save(self):
        self.results_path.write_text(json.dumps(self.results, indent=1))

    def row(self, name: str, path: Path, fmt: str, precision: str, extra: dict | None = None, latency: bool = True):
        a = self.args
        acc, probs = accuracy(path, self.x_test, self.y_test, a.threads)
        n = len(self.y_test)
        agreeing = int(np.sum(probs.argmax(1) == self.float_probs.argmax(1)))
        # Paired on the same test images: most of them are right for both files, so this interval
        # is far narrower than the two accuracies' own intervals would suggest.
        delta = paired_difference(probs.argmax(1) == self.y_test, self.float_probs.argmax(1) == self.y_test)
        row = {
            "artifact": name, "file": str(path), "format": fmt, "precision": precision,
            "accuracy": acc, "n": n, "ci95": list(wilson_interval(round(acc * n), n)),
            "delta_points": 100 * (acc - self.float_acc), "delta_ci95_points": [100 * delta.low, 100 * delta.high],
            "agreement": agreeing / n, "agreement_ci95": list(wilson_interval(agreeing, n)),
            "size": path.stat().st_size, "gzip": gzip_size(path),
            "latency_ms": latency_ms(path, self.x_test, a.threads, a.runs) if latency else None,
            **(extra or {}),
        }
        self.results.setdefault("rows", {})[name] = row
        self.save()
        print(format_row(row), flush=True)
        return row

    def calibration(self, n: int, seed: int | None = None):
        from edgetl.compiler.compression.quantize import calibration_sample

        return calibration_sample(self.x_train, self.y_train, n, self.args.seed if seed is None else seed)

    # ---------------------------------------------------------------- steps
    def ptq(self):
        from edgetl.compiler.export.convert import export_onnx, export_tflite
        from edgetl.compiler.compression.quantize import convert_tflite, quantize_onnx, tflite_io_details, write_tflite

        w = self.work
        cal = self.calibration(self.args.calibration)
        export_tflite(self.student, w / "fp32.tflite")
        self.row("tflite fp32", w / "fp32.tflite", "tflite", "fp32")
        for precision in ("fp16", "dynamic"):
            write_tflite(w / f"{precision}.tflite", convert_tflite(self.student, precision))
            self.row(f"tflite {precision}", w / f"{precision}.tflite", "tflite", precision)
        for io in ("uint8", "float32"):
            t = time.perf_counter()
            write_tflite(w / f"int8_{io}.tflite", convert_tflite(self.student, "int8", cal, io))
            self.row(f"tflite int8 ({io} I/O)", w / f"int8_{io}.tflite", "tflite", "int8",
                     {"convert_s": time.perf_counter() - t, "io": tflite_io_details(w / f"int8_{io}.tflite")})
        export_onnx(self.student, w / "fp32.onnx")
        self.row("onnx fp32", w / "fp32.onnx", "onnx", "fp32")
        for act in self.args.onnx_activations.split(","):
            t = time.perf_counter()
            quantize_onnx(w / "fp32.onnx", w / f"int8_{act}.onnx", cal, activation_type=act)
            self.row(f"onnx int8 QDQ (act {act})", w / f"int8_{act}.onnx", "onnx", "int8",
                     {"convert_s": time.perf_counter() - t})

    def calib(self):
        from edgetl.compiler.export.convert import export_onnx
        from edgetl.compiler.compression.quantize import convert_tflite, quantize_onnx, write_tflite

        w = self.work
        if not (w / "fp32.onnx").exists():
            export_onnx(self.student, w / "fp32.onnx")
        out = self.results.setdefault("calibration", {})
        for n in [int(v) for v in self.args.sizes.split(",")]:
            for seed in range(self.args.calibration_seeds):
                cal = self.calibration(n, seed)
                t = time.perf_counter()
                path = write_tflite(w / "cal.tflite", convert_tflite(self.student, "int8", cal, "uint8"))
                seconds = time.perf_counter() - t
                acc, probs = accuracy(path, self.x_test, self.y_test, self.args.threads)
                t = time.perf_counter()
                quantize_onnx(w / "fp32.onnx", w / "cal.onnx", cal)
                onnx_seconds = time.perf_counter() - t
                onnx_acc, onnx_probs = accuracy(w / "cal.onnx", self.x_test, self.y_test, self.args.threads)
                # finer than accuracy (one test image is 0.42 points): how far the probabilities move
                dev = float(np.mean(np.abs(probs - self.float_probs).sum(1)))
                onnx_dev = float(np.mean(np.abs(onnx_probs - self.float_probs).sum(1)))
                out[f"{n}/{seed}"] = {"n": n, "seed": seed, "tflite_accuracy": acc, "tflite_convert_s": seconds,
                                      "tflite_l1": dev, "onnx_accuracy": onnx_acc, "onnx_convert_s": onnx_seconds,
                                      "onnx_l1": onnx_dev}
                self.save()
                print(f"calibration {n:4d} images (seed {seed}): tflite int8 {describe_accuracy(acc, len(self.y_test))} "
                      f"(mean L1 to float {dev:.4f}, {seconds:.0f} s), onnx int8 {describe_accuracy(onnx_acc, len(self.y_test))} "
                      f"(L1 {onnx_dev:.4f}, {onnx_seconds:.0f} s)", flush=True)
        for bad, images in {
            "black": np.zeros_like(self.calibration(16)),
            "one image x16": np.repeat(self.calibration(1), 16, axis=0),
        }.items():
            path = write_tflite(w / "cal.tflite", convert_tflite(self.student, "int8", images, "uint8"))
            acc, _ = accuracy(path, self.x_test, self.y_test, self.args.threads)
            out[f"broken: {bad}"] = {"tflite_accuracy": acc}
            self.save()
            print(f"calibration broken ({bad}): tflite int8 {describe_accuracy(acc, len(self.y_test))}", flush=True)

    def _fine_tune(self, model, epochs, lr, label):
        from edgetl.compiler.compression.compress import fine_tune

        result = fine_tune(
            model, teacher=self.teacher, train_views=(self.x_view, self.y_train), val=(self.x_val, self.y_val),
            epochs=epochs, learning_rate=lr, batch_size=self.args.batch_size, temperature=self.args.temperature,
            alpha=self.args.alpha if self.teacher is not None else 0.0, seed=self.args.seed, label=label,
        )
        print(f"  {label}: {json.dumps(result.to_json())}", flush=True)
        return result

    def qat(self):
        from edgetl.compiler.compression.compress import float_layers, quantize_aware
        from edgetl.compiler.compression.quantize import convert_tflite, tflite_summary, write_tflite

        a = self.args
        for lr in [float(v) for v in a.qat_lr.split(",")]:
            t = time.perf_counter()
            model = quantize_aware(self.student, self.calibration(a.calibration) if a.calibrate_qat else None)
            result = self._fine_tune(model, a.qat_epochs, lr, f"QAT lr {lr:g}")
            path = write_tflite(self.work / f"qat_{lr:g}.tflite",
                                convert_tflite(model, "int8", self.calibration(a.calibration), "uint8"))
            summary = tflite_summary(path)
            tag = "" if a.calibrate_qat else ", uncalibrated ranges"
            self.row(f"tflite QAT int8 ({a.qat_epochs} ep, lr {lr:g}{tag})", path, "tflite", "int8 (QAT)", {
                "train": result.to_json(), "seconds": time.perf_counter() - t,
                "float_layers": float_layers(model), "float_ops": summary["float_ops"],
            })

    def prune(self):
        from edgetl.compiler.compression.compress import (
            prune, prune_preserving_qat, pruning_steps, sparsity_of, strip, weight_sparsity,
        )
        from edgetl.compiler.export.convert import export_onnx, export_tflite
        from edgetl.compiler.compression.quantize import convert_tflite, quantize_onnx, write_tflite

        a = self.args
        w = self.work
        cal = self.calibration(a.calibration)
        begin, end = pruning_steps(len(self.y_train), a.batch_size, a.prune_ramp_epochs)
        saved = w / f"pruned_{a.sparsity:g}.keras"
        if saved.exists() and a.reuse_pruned:
            from edgetl.runtime.keras_model import load_keras_model

            stripped = load_keras_model(saved)
            info = self.results.get("pruning", {})
        else:
            t = time.perf_counter()
            pruned = prune(self.student, a.sparsity, begin, end)
            result = self._fine_tune(pruned, a.prune_epochs, a.prune_lr, f"prune {a.sparsity:g}")
            stripped = strip(pruned)
            stripped.save(saved)
            info = {"sparsity": sparsity_of(stripped), "all_kernels": weight_sparsity(stripped),
                    "train": result.to_json(), "seconds": time.perf_counter() - t}
            self.results["pruning"] = info
        tag = f"{a.sparsity:g}"
        export_tflite(stripped, w / f"pruned{tag}_fp32.tflite")
        self.row(f"tflite pruned {tag} fp32", w / f"pruned{tag}_fp32.tflite", "tflite", "fp32", info)
        write_tflite(w / f"pruned{tag}_int8_ptq.tflite", convert_tflite(stripped, "int8", cal, "uint8"))
        self.row(f"tflite pruned {tag} int8 PTQ", w / f"pruned{tag}_int8_ptq.tflite", "tflite", "int8", info)
        export_onnx(stripped, w / f"pruned{tag}_fp32.onnx")
        quantize_onnx(w / f"pruned{tag}_fp32.onnx", w / f"pruned{tag}_int8.onnx", cal)
        self.row(f"onnx pruned {tag} int8 QDQ", w / f"pruned{tag}_int8.onnx", "onnx", "int8", info)
        t = time.perf_counter()
        pqat = prune_preserving_qat(stripped, cal if a.calibrate_qat else None)
        result = self._fine_tune(pqat, a.qat_epochs, float(a.qat_lr.split(",")[0]), "PQAT")
        path = write_tflite(w / f"pruned{tag}_pqat_int8.tflite", convert_tflite(pqat, "int8", cal, "uint8"))
        self.row(f"tflite pruned {a.sparsity:g} + PQAT int8", path, "tflite", "int8 (PQAT)",
                 {"sparsity": sparsity_of(pqat), "train": result.to_json(), "seconds": time.perf_counter() - t})

    def cluster(self):
        """Sparsity-preserving clustering of the pruned model (WORK/pruned_S.keras, from the prune
        step), then pruning- and cluster-preserving QAT (PCQAT) to an int8 TFLite."""
        from edgetl.compiler.compression.compress import (
            cluster, cluster_preserving_qat, distinct_values, sparsity_of, strip_clusters,
        )
        from edgetl.compiler.compression.quantize import convert_tflite, write_tflite
        from edgetl.runtime.keras_model import load_keras_model

        a = self.args
        saved = self.work / f"pruned_{a.sparsity:g}.keras"
        if not saved.exists():
            raise SystemExit(f"{saved} is missing: run the prune step first")
        stripped = load_keras_model(saved)
        cal = self.calibration(a.calibration)
        tag = f"pruned {a.sparsity:g} + {a.clusters} clusters"
        t = time.perf_counter()
        clustered = cluster(stripped, a.clusters)
        result = self._fine_tune(clustered, a.cluster_epochs, a.cluster_lr, f"cluster {a.clusters}")
        plain = strip_clusters(clustered)
        info = {"sparsity": sparsity_of(plain), "distinct_values": distinct_values(plain),
                "train": result.to_json(), "seconds": time.perf_counter() - t}
        path = write_tflite(self.work / f"pruned{a.sparsity:g}_c{a.clusters}_ptq_int8.tflite",
                            convert_tflite(plain, "int8", cal, "uint8"))
        self.row(f"tflite {tag} int8 PTQ", path, "tflite", "int8", info)
        t = time.perf_counter()
        pcqat = cluster_preserving_qat(plain, cal if a.calibrate_qat else None)
        result = self._fine_tune(pcqat, a.qat_epochs, float(a.qat_lr.split(",")[0]), "PCQAT")
        path = write_tflite(self.work / f"pruned{a.sparsity:g}_c{a.clusters}_pcqat_int8.tflite",
                            convert_tflite(pcqat, "int8", cal, "uint8"))
        self.row(f"tflite {tag} + PCQAT int8", path, "tflite", "int8 (PCQAT)",
                 {"sparsity": sparsity_of(pcqat), "train": result.to_json(), "seconds": time.perf_counter() - t})

    def gzipcurve(self):
        """gzip size of the int8 file against sparsity, by one-shot magnitude pruning (no training:
        the size depends on the zeros, not on the accuracy recovered by fine-tuning)."""
        from edgetl.compiler.compression.compress import _copy, _prunable, sparsity_of
        from edgetl.compiler.compression.quantize import convert_tflite, write_tflite

        cal = self.calibration(self.args.calibration)
        out = self.results.setdefault("gzip_vs_sparsity", {})
        for target in [float(v) for v in self.args.curve.split(",")]:
            model = _copy(self.student)
            for layer in model.layers:
                if _prunable(layer, False, False):
                    kernel = layer.kernel.numpy()
                    cut = np.quantile(np.abs(kernel), target)
                    layer.kernel.assign(np.where(np.abs(kernel) <= cut, 0.0, kernel))
            path = write_tflite(self.work / "curve.tflite", convert_tflite(model, "int8", cal, "uint8"))
            acc, _ = accuracy(path, self.x_test, self.y_test, self.args.threads)
            out[f"{target:g}"] = {"sparsity": sparsity_of(model), "size": path.stat().st_size,
                                  "gzip": gzip_size(path), "accuracy_no_finetune": acc}
            self.save()
            print(f"one-shot {target:.2f}: sparsity {sparsity_of(model):.3f} size {path.stat().st_size / 1e6:.2f} MB "
                  f"gzip {gzip_size(path) / 1e6:.2f} MB  accuracy without fine-tuning {describe_accuracy(acc, len(self.y_test))}",
                  flush=True)

    def latency_again(self):
        """Re-time every file (a quiet machine gives steadier figures than the training steps)."""
        for row in self.results.get("rows", {}).values():
            path = Path(row.get("file") or self.work / "missing")
            if path.exists():
                # best of three medians: other processes on a shared 2-core machine only add time
                row["latency_ms"] = min(latency_ms(path, self.x_test, self.args.threads, self.args.runs) for _ in range(3))
                print(format_row(row), flush=True)
        self.save()


def format_row(row: dict) -> str:
    """One artefact's line: accuracy (95% CI, n), change from the float model (paired 95% CI),
    top-class agreement with it (95% CI), sizes and p50. Rows written before the intervals were
    recorded (an older WORK/results.json) print without them."""
    lat = f"{row['latency_ms']:.2f} ms" if row.get("latency_ms") is not None else "-"
    if "n" not in row:
        accuracy = f"acc {row['accuracy']:.1%} (no interval recorded)"
        change = f"{row['delta_points']:+.1f} pt"
        agree = f"{row['agreement']:.1%}"
    else:
        accuracy = f"acc {accuracy_span(row['accuracy'], row['ci95'])} n={row['n']}"
        # results.json keeps the change in points; the formatter takes fractions.
        change = points_span(row["delta_points"] / 100, [v / 100 for v in row["delta_ci95_points"]])
        agree = accuracy_span(row["agreement"], row["agreement_ci95"])
    return (f"{row['artifact']:<38} {accuracy}, vs float {change}, agree {agree}  "
            f"size {row['size'] / 1e6:6.2f} MB  gzip {row['gzip'] / 1e6:6.2f} MB  p50 {lat}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", required=True)
    p.add_argument("--teacher")
    p.add_argument("--data", required=True, help="a folder with train/ and test/ (the study scores on test/)")
    p.add_argument("--work", default="/tmp/edgetl-compression-study")
    p.add_argument("--steps", default="ptq,calib,qat,prune")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calibration", type=int, default=128)
    p.add_argument("--sizes", default="16,64,128,256")
    p.add_argument("--calibration-seeds", type=int, default=1)
    p.add_argument("--onnx-activations", default="int8,uint8")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.9)
    p.add_argument("--qat-epochs", type=int, default=3)
    p.add_argument("--qat-lr", default="1e-5")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--curve", default="0,0.5,0.6,0.7,0.75")
    p.add_argument("--prune-epochs", type=int, default=6)
    p.add_argument("--prune-ramp-epochs", type=float, default=3.0)
    p.add_argument("--prune-lr", type=float, default=1e-4)
    p.add_argument("--clusters", type=int, default=16)
    # The compile's own clustering recipe (CompileConfig: 4 epochs at 1e-4), so the study measures
    # what `--cluster` does. Until 2026-11-30 the study used 2 epochs at 1e-5: on a student whose
    # backbone is ImageNet's (a probe head) that left the clustered model still recovering.
    p.add_argument("--cluster-epochs", type=int, default=CompileConfig.cluster_epochs)
    p.add_argument("--cluster-lr", type=float, default=CompileConfig.cluster_learning_rate)
    p.add_argument("--calibrate-qat", type=int, default=1, help="start QAT ranges from calibration (1) or not (0)")
    p.add_argument("--reuse-pruned", type=int, default=1, help="reuse WORK/pruned_S.keras when it exists")
    args = p.parse_args(argv)
    study = Study(args)
    for step in args.steps.split(","):
        print(f"==> {step}", flush=True)
        getattr(study, {"prune": "prune", "latency": "latency_again"}.get(step, step))()
    print("\n".join(format_row(r) for r in study.results.get("rows", {}).values()))


if __name__ == "__main__":
    main()
