"""Overhead you can trust: `edgetl bench`'s p50 against the raw runtime call, in one run.

    python -m edgetl.benchmarks.overhead [--work DIR] [--threads 2] [--rounds 5] [--cores 0]

Builds (once, in a child process; cached in --work, a temp folder by default, never the
repository):
  * EfficientNet-Lite0 (ImageNet weights, 12-class head) as a full-integer int8 .tflite with
    uint8 I/O, calibrated on real photos, and as an int8 static QDQ .onnx (ONNX Runtime
    quantization of the fp32 ONNX export, same calibration photos);
  * ResNet50 (random weights: latency does not depend on them) as fp32 .tflite and .onnx.
Then, per file x runtime, two comparisons:
  * paired: in one fresh process, the raw call (`interpreter.invoke()` with the input set once,
    or `session.run(None, feed)`) and edgetl's `Session.invoke(tensor)` (what `edgetl bench`
    times) on the same loaded model, alternating blocks of 10 calls. Both see the same machine
    load at the same moment, so this ratio holds even on a busy machine: the < 5% bar;
  * processes: `rounds` alternating pairs of a raw process and the very worker `edgetl bench`
    starts (`harness.run_worker`: fresh process, its own timing loop), same threads, warm-up,
    runs and input; the median of the per-round ratios. This covers the whole bench path, but
    only a quiet machine gives it a tight figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_CALIB_IMAGES = 64


# --------------------------------------------------------------------------------------------
# The raw side: nothing of edgetl's runtime layer, only the runtime library.
# --------------------------------------------------------------------------------------------


def raw_case(spec: dict) -> dict:
    if spec.get("cores"):
        os.sched_setaffinity(0, spec["cores"])
    rng = np.random.default_rng(0)
    threads = spec.get("threads")
    if spec["runtime"] == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interp = Interpreter(model_path=spec["path"], num_threads=threads)
        interp.allocate_tensors()
        detail = interp.get_input_details()[0]
        shape, dtype = detail["shape"], np.dtype(detail["dtype"])
        pixels = rng.integers(0, 256, tuple(shape), dtype=np.uint8)
        if dtype.kind == "f":
            x = pixels.astype(dtype)
        else:  # an integer image input takes the bytes (int8: minus 128), whatever its scale
            from edgetl.runtime.litert import pixel_bytes

            x = pixel_bytes(pixels, dtype)
        interp.set_tensor(detail["index"], x)
        call = interp.invoke
    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(spec["path"], options, providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        size = inp.shape[1]
        feed = {inp.name: rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8).astype(np.float32)}
        run = session.run

        def call():
            run(None, feed)

    clock = time.perf_counter_ns
    call()
    for _ in range(spec["warmup"]):
        call()
    samples = []
    deadline = clock() + int(spec["min_time"] * 1e9)
    while len(samples) < spec["runs"] or clock() < deadline:
        t0 = clock()
        call()
        samples.append(clock() - t0)
    return {"p50_ms": float(np.percentile(samples, 50)) / 1e6, "runs": len(samples)}


def paired_case(spec: dict) -> dict:
    """Raw call and edgetl's `Session.invoke` on the same loaded model, alternating in blocks.

    Both sides share the interpreter (or ORT session), its memory and the machine's load at
    that moment, so the ratio isolates what edgetl's session layer adds to each call.
    """
    if spec.get("cores"):
        os.sched_setaffinity(0, spec["cores"])
    from edgetl.runtime import open_session

    session = open_session(spec["path"], runtime=spec["runtime"], threads=spec.get("threads"))
    pixels = np.random.default_rng(0).integers(0, 256, (1, session.input_size, session.input_size, 3), dtype=np.uint8)
    tensor = session.prepare(pixels)
    if spec["runtime"] == "litert":
        interp = session.interpreter
        interp.set_tensor(interp.get_input_details()[0]["index"], tensor)
        raw = interp.invoke
    else:
        ort_session, feed = session.session, {session.session.get_inputs()[0].name: tensor}

        def raw():
            ort_session.run(None, feed)

    def edgetl():
        session.invoke(tensor)

    clock = time.perf_counter_ns
    for _ in range(spec["warmup"]):
        raw()
        edgetl()
    samples: dict[str, list[int]] = {"raw": [], "edgetl": []}
    block = 10
    deadline = clock() + int(spec["min_time"] * 1e9)
    while len(samples["raw"]) < spec["runs"] or clock() < deadline:
        for name, fn in (("raw", raw), ("edgetl", edgetl)):
            out = samples[name]
            for _ in range(block):
                t0 = clock()
                fn()
                out.append(clock() - t0)
    return {name: float(np.percentile(v, 50)) / 1e6 for name, v in samples.items()} | {"runs": len(samples["raw"])}


def _run_raw(spec: dict, workdir: Path, index: int, mode: str = "--raw-case") -> dict:
    import subprocess

    spec_file, out_file = workdir / f"raw{index}.json", workdir / f"raw{index}.out.json"
    spec_file.write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, "-m", "edgetl.benchmarks.overhead", mode, str(spec_file), str(out_file)],
        capture_output=True, text=True, timeout=900,
    )
    if proc.returncode != 0 or not out_file.is_file():
        raise RuntimeError(f"{mode} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(out_file.read_text())


# --------------------------------------------------------------------------------------------
# Building the files (TensorFlow is imported here only)
# --------------------------------------------------------------------------------------------


def _default_calibration_dir() -> Path | None:
    shared = Path(os.environ.get("EDGETL_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    for candidate in (shared / "datasets" / "flowers12" / "train", shared / "datasets" / "flowers12"):
        if candidate.is_dir():
            return candidate
    return None


def _calibration_images(folder: Path | None, size: int, log) -> np.ndarray:
    from edgetl.compiler.data.datasets import load_images, scan_dataset

    if folder is None:
        log("no calibration photos found (pass --calib DIR): calibrating on random pixels")
        return np.random.default_rng(0).integers(0, 256, (16, size, size, 3), dtype=np.uint8)
    ds = scan_dataset(folder, val_fraction=0.0, test_fraction=0.0)
    samples = [s for split in ("train", "val", "test") for s in ds.splits[split]]
    step = max(1, len(samples) // _CALIB_IMAGES)
    images, _ = load_images(samples[::step][:_CALIB_IMAGES], size)
    log(f"calibration: {len(images)} photos from {folder}")
    return images


def _tflite_int8(model, calib: np.ndarray) -> bytes:
    from edgetl.compiler.compression.quantize import convert_tflite

    return convert_tflite(model, "int8", calibration=calib, io_dtype="uint8")


def _onnx_int8(float_onnx: Path, out: Path, calib: np.ndarray) -> None:
    from edgetl.compiler.compression.quantize import quantize_onnx

    quantize_onnx(float_onnx, out, calib)


def build_models(work: Path, calib_dir: Path | None, log) -> dict[str, Path]:
    files = {
        "lite0_int8.tflite": work / "lite0_int8.tflite",
        "lite0_int8_qdq.onnx": work / "lite0_int8_qdq.onnx",
        "resnet50_fp32.tflite": work / "resnet50_fp32.tflite",
        "resnet50_fp32.onnx": work / "resnet50_fp32.onnx",
    }
    if all(p.is_file() for p in files.values()):
        log(f"using the files already built in {work}")
        return files
    from edgetl.atomic import atomic_write_bytes
    from edgetl.compiler.export.convert import export_onnx, export_tflite
    from edgetl.models import create_model

    work.mkdir(parents=True, exist_ok=True)
    if not (files["lite0_int8.tflite"].is_file() and files["lite0_int8_qdq.onnx"].is_file()):
        log("building EfficientNet-Lite0 int8 (TFLite full-integer, ONNX static QDQ)...")
        lite0 = create_model("efficientnet_lite0", weights="imagenet", num_classes=12)
        calib = _calibration_images(calib_dir, lite0.input_shape[1], log)
        atomic_write_bytes(files["lite0_int8.tflite"], _tflite_int8(lite0, calib))
        float_onnx = work / "lite0_fp32.onnx"
        export_onnx(lite0, float_onnx)
        _onnx_int8(float_onnx, files["lite0_int8_qdq.onnx"], calib)
    if not (files["resnet50_fp32.tflite"].is_file() and files["resnet50_fp32.onnx"].is_file()):
        log("building ResNet50 fp32 (random weights)...")
        resnet = create_model("resnet50", weights=None, num_classes=12)
        export_tflite(resnet, files["resnet50_fp32.tflite"])
        export_onnx(resnet, files["resnet50_fp32.onnx"])
    return files


# --------------------------------------------------------------------------------------------
# Comparing
# --------------------------------------------------------------------------------------------


_CASES = (
    ("EfficientNet-Lite0 int8", "lite0_int8.tflite", "litert"),
    ("EfficientNet-Lite0 int8 QDQ", "lite0_int8_qdq.onnx", "onnxruntime"),
    ("ResNet50 fp32", "resnet50_fp32.tflite", "litert"),
    ("ResNet50 fp32", "resnet50_fp32.onnx", "onnxruntime"),
)


def compare(files: dict[str, Path], threads: int, rounds: int, runs: int, warmup: int, min_time: float,
            cores: list[int] | None, log) -> list[dict]:
    from edgetl.benchmarks.harness import run_worker

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgetl-overhead-") as tmp:
        workdir = Path(tmp)
        index = 0
        for name, key, runtime in _CASES:
            path = files[key]
            spec = {"path": str(path), "runtime": runtime, "threads": threads, "cores": cores, "batch": 1,
                    "warmup": warmup, "runs": runs, "min_time": min_time}
            index += 1
            log(f"case {len(rows) + 1} of {len(_CASES)}: {name} on {runtime} (paired, then {rounds} process rounds)")
            paired = _run_raw(spec, workdir, index, "--paired-case")
            raw, harness = [], []
            for r in range(rounds):
                # Alternate which side goes first, so a drift in machine load hits both alike.
                order = ("raw", "edgetl") if r % 2 == 0 else ("edgetl", "raw")
                for side in order:
                    index += 1
                    if side == "raw":
                        raw.append(_run_raw(spec, workdir, index)["p50_ms"])
                    else:
                        result = run_worker(spec, workdir, index, 900)
                        if result.get("status") != "ok":
                            raise RuntimeError(f"edgetl worker failed on {path.name}: {result.get('reason')}")
                        harness.append(result["p50_ms"])
            ratios = [h / w for h, w in zip(harness, raw)]
            row = {
                "model": name, "file": path.name, "size_mb": round(path.stat().st_size / 1e6, 1),
                "runtime": runtime, "threads": threads,
                "raw_call": "interpreter.invoke()" if runtime == "litert" else "session.run(None, feed)",
                "paired": {"raw_p50_ms": paired["raw"], "edgetl_p50_ms": paired["edgetl"],
                           "ratio": paired["edgetl"] / paired["raw"], "runs_each": paired["runs"]},
                "processes": {"raw_p50_ms": raw, "edgetl_bench_p50_ms": harness, "round_ratios": ratios,
                              "ratio": statistics.median(ratios)},
            }
            rows.append(row)
            log(f"{name} {runtime}: paired x{row['paired']['ratio']:.3f}, processes x{row['processes']['ratio']:.3f}")
    return rows


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("--raw-case", "--paired-case"):
        spec = json.loads(Path(argv[1]).read_text())
        result = raw_case(spec) if argv[0] == "--raw-case" else paired_case(spec)
        Path(argv[2]).write_text(json.dumps(result))
        return 0
    if argv and argv[0] == "--build":  # in its own process: TensorFlow's memory goes with it
        build_models(Path(argv[1]), Path(argv[2]) if argv[2] != "-" else None, lambda m: print(m, file=sys.stderr))
        return 0

    from edgetl.benchmarks.environment import collect, one_line, usable_cores

    parser = argparse.ArgumentParser(prog="python -m edgetl.benchmarks.overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgetl-overhead",
                        help="folder for the built models (reused when present) and overhead.json")
    parser.add_argument("--calib", type=Path, default=None, help="calibration photos (class folders)")
    parser.add_argument("--threads", type=int, default=len(usable_cores()))
    parser.add_argument("--cores", type=str, default=None, help="pin to these cores, e.g. 0 or 0-1")
    parser.add_argument("--rounds", type=int, default=5, help="alternating raw/edgetl process pairs per case")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--min-time", type=float, default=1.0)
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    from edgetl.benchmarks.harness import check_cores, parse_int_list

    cores = list(check_cores(parse_int_list(args.cores, "cores"))) if args.cores else None
    files = {key: args.work / key for _, key, _ in _CASES}
    if not all(p.is_file() for p in files.values()):
        import subprocess

        calib = args.calib or _default_calibration_dir()
        # The first run builds four files with TensorFlow: minutes without output otherwise.
        log(f"building the model files once into {args.work} (later runs reuse them); then {len(_CASES)} cases")
        subprocess.run([sys.executable, "-m", "edgetl.benchmarks.overhead", "--build", str(args.work),
                        str(calib) if calib else "-"], check=True)
    env = collect(cores)
    load_before = _load()
    rows = compare(files, args.threads, args.rounds, args.runs, args.warmup, args.min_time, cores, log)
    load_after = _load()

    print(f"edgetl overhead at p50 · {one_line(env)} · threads {args.threads}"
          + (f" · cores {cores}" if cores else "") + f" · load average {load_before} -> {load_after}")
    print("paired: raw call and edgetl Session.invoke on one loaded model, alternating blocks of 10 calls, "
          f">= {args.runs} calls each")
    print(f"processes: raw process vs the `edgetl bench` worker, {args.rounds} alternating rounds, median of "
          "per-round ratios")
    header = (f"{'model':28} {'runtime':12} {'raw call':24} {'raw p50':>9} {'edgetl p50':>10} {'paired':>7} "
              f"{'processes':>9}  per round")
    print(header)
    print("-" * len(header))
    for r in rows:
        p, q = r["paired"], r["processes"]
        rounds = " ".join(f"{x:.3f}" for x in q["round_ratios"])
        print(f"{r['model']:28} {r['runtime']:12} {r['raw_call']:24} {p['raw_p50_ms']:7.3f}ms "
              f"{p['edgetl_p50_ms']:8.3f}ms {p['ratio']:7.3f} {q['ratio']:9.3f}  {rounds}")
    for r in rows:
        if r["model"].startswith("EfficientNet-Lite0"):
            ratio = r["paired"]["ratio"]
            verdict = "meets" if ratio < 1.05 else "MISSES"
            print(f"{r['model']} on {r['runtime']}: edgetl adds {100 * (ratio - 1):+.1f}% at p50 "
                  f"({verdict} the < 5% bar; process-level {100 * (r['processes']['ratio'] - 1):+.1f}%)")
    out = args.work / "overhead.json"
    out.write_text(json.dumps({"environment": env, "threads": args.threads, "cores": cores, "rounds": args.rounds,
                               "runs": args.runs, "load_average": [load_before, load_after], "rows": rows},
                              indent=2) + "\n")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
