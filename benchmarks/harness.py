"""`edgetl bench`: latency, load time, memory and accuracy per file x runtime x threads.

    from edgetl.benchmarks.harness import BenchConfig, run_bench
    report = run_bench(BenchConfig(models=(Path("build/flowers"),), threads=(1, 2)))

Each case runs in a fresh worker process (`edgetl.benchmarks._worker`), so import time, model
load time and peak memory are that case's alone and `cores` pinning covers the runtime's
threads. Latency is per `Session.invoke` on an input prepared once (copy in, inference, copy
out): the model on its runtime, not the Python around it (`benchmarks/overhead.py` checks that
against the raw interpreter). Accuracy (with `data`) runs on the same
decoded images `edgetl compile` uses (`compiler.data.datasets.load_images`), so it reproduces the
compile report's figures; it is measured in every case (thread counts may change float
results in the last bits, so each row's accuracy is its own).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgetl.compiler.evaluation.stats import describe_accuracy, wilson_interval
from edgetl.compiler.report.facts import report_shape_problem
from edgetl.errors import BenchSettingsError, DataError, ModelFileError
from edgetl.runtime import MAX_THREADS

BENCH_JSON = "bench.json"
BENCH_PNG = "bench.png"
EVAL_BATCH = 32  # `edgetl compile`'s default batch; its report's batch_size wins when present
_CASE_TIMEOUT_S = 900


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    models: tuple[Path, ...]
    data: Path | None = None
    threads: tuple[int, ...] | None = None  # None: every usable (or pinned) core
    runtimes: tuple[str, ...] | None = None  # None: every default runtime for each format
    cores: tuple[int, ...] | None = None  # pin each worker to these CPU cores
    batch: int = 1
    warmup: int = 10
    runs: int = 100
    min_time: float = 0.0
    out: Path | None = None  # None: <first model's folder>/bench
    chart: bool = True
    trust_model: bool = False  # load Keras models that hold code (runtime/model_safety.py)
    corruptions: bool = False  # also score each file on the corruption suite of --data (compiler/evaluation/robustness.py)
    overwrite: bool = False  # replace an earlier bench.json (and bench.png) in the out folder

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["models"] = [str(p) for p in self.models]
        d["data"] = str(self.data) if self.data else None
        d["out"] = str(self.out) if self.out else None
        return d


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------

RUNTIME_GROUPS = {"cpu": "every CPU runtime", "gpu": "every GPU runtime", "all": "every runtime"}


def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    """"1,2,4" or "0-3,6" -> ints (ranges only where `what` is cores)."""
    out: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part and what == "cores":
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            example = "0 or 0,1 or 0-3" if what == "cores" else "1,2,4"
            raise BenchSettingsError(f"--{what} {text!r} is not a list of numbers; pass e.g. {example}") from None
    if not out:
        raise BenchSettingsError(f"--{what} is empty; pass e.g. {'0' if what == 'cores' else '1,2'}")
    if what == "threads" and min(out) < 1:
        raise BenchSettingsError(f"--threads {text!r}: thread counts must be at least 1")
    if what == "threads" and max(out) > MAX_THREADS:
        raise BenchSettingsError(f"--threads {text!r}: thread counts must be at most {MAX_THREADS}")
    return tuple(dict.fromkeys(out))


def resolve_runtimes(names: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """Validate a --runtime filter; groups (cpu, gpu, all) expand to runtime names."""
    from edgetl.runtime import RUNTIMES

    if not names:
        return None
    out: list[str] = []
    for name in names:
        name = name.strip().lower()
        if name in RUNTIMES:
            out.append(name)
        elif name in ("cpu", "gpu"):
            out.extend(n for n, s in RUNTIMES.items() if s.device == name and s.format != "keras")
        elif name == "all":
            out.extend(RUNTIMES)
        else:
            raise BenchSettingsError(
                f"--runtime {name!r} is not a runtime; one of {', '.join(RUNTIMES)} (or cpu, gpu, all)"
            )
    return tuple(dict.fromkeys(out))


def check_cores(cores: tuple[int, ...] | None) -> tuple[int, ...] | None:
    from edgetl.benchmarks.environment import usable_cores

    if not cores:
        return None
    if not hasattr(os, "sched_setaffinity"):
        raise BenchSettingsError("--cores needs sched_setaffinity, which this platform does not have (Linux only)")
    usable = usable_cores()
    bad = [c for c in cores if c not in usable]
    if bad:
        raise BenchSettingsError(
            f"--cores {','.join(map(str, bad))}: not a core this process may use "
            f"(usable: {_ranges(usable)})"
        )
    return tuple(sorted(set(cores)))


def _ranges(values: list[int]) -> str:
    values = sorted(values)
    parts, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ",".join(parts)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def discover_models(paths: tuple[Path, ...], include_keras: bool = False, log: Callable[[str], object] | None = None) -> list[Path]:
    """The model files named, and every .tflite/.onnx in each folder named (Keras too if asked).

    A file in a folder with the same bytes as one found before it (the deployed model.tflite is
    also its variant in variants/) is benchmarked once, and `log` says so: two rows of one file
    would read as two models whose p50s differ only by noise."""
    from edgetl.runtime import model_format

    if not paths:
        raise ModelFileError("no model given; pass .tflite/.onnx files or a folder that holds them")
    found: list[Path] = []
    for path in paths:
        path = Path(path).expanduser()
        if not path.exists():
            raise ModelFileError(f"model file or folder not found: {path}")
        if path.is_dir() and model_format(path) is None:
            inside = []
            # A folder edgetl compile wrote keeps every measured candidate in variants/: "every
            # file" of the folder includes them.
            variants = path / "variants"
            children = sorted(path.iterdir()) + (sorted(variants.iterdir()) if variants.is_dir() else [])
            for child in children:
                if child.name.startswith("."):  # hidden, or a temporary name of an atomic write
                    continue
                fmt = model_format(child)
                if fmt in ("tflite", "onnx") or (fmt == "keras" and include_keras):
                    inside.append(child)
            if not inside:
                raise ModelFileError(f"no .tflite or .onnx file in folder {path}; pass the folder edgetl compile wrote")
            found.extend(_distinct_files(inside, path, log))
        else:
            if model_format(path) is None:
                raise ModelFileError(
                    f"{path}: unknown model format {path.suffix or '(no suffix)'!r}; expected a .tflite, "
                    ".onnx, .keras or .h5 file, a SavedModel folder, or a folder holding them"
                )
            found.append(path)
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def _distinct_files(files: list[Path], folder: Path, log: Callable[[str], object] | None) -> list[Path]:
    """`files` less those whose bytes repeat an earlier one's (SavedModel folders kept as they are)."""
    import hashlib

    kept: dict[str, Path] = {}
    distinct = []
    for f in files:
        if not f.is_file():
            distinct.append(f)
            continue
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        if digest in kept:
            if log:
                log(f"{f.relative_to(folder)}: the same file as {kept[digest].relative_to(folder)}, benchmarked once")
            continue
        kept[digest] = f
        distinct.append(f)
    return distinct


def file_precision(path: Path, fmt: str) -> str:
    """fp32 / fp16 / int8 / dynamic-range int8, read from the file's tensors or ops."""
    try:
        if fmt == "tflite":
            from edgetl.runtime.litert import open_interpreter

            kinds = [np.dtype(t["dtype"]).name for t in open_interpreter(path, 1).get_tensor_details()]
            n = max(len(kinds), 1)
            ints = sum(k in ("int8", "uint8") for k in kinds)
            if ints / n > 0.5:
                return "int8"
            if "int16" in kinds and ints:
                return "int16x8"
            if ints:
                return "dynamic-range int8"
            return "fp16" if "float16" in kinds else "fp32"
        if fmt == "onnx":
            import onnx

            model = onnx.load(str(path), load_external_data=False)
            ops = {node.op_type for node in model.graph.node}
            if ops & {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}:
                return "dynamic-range int8"
            if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul"}:
                return "int8"
            if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
                return "fp16"
            return "fp32"
        return "fp32"
    except Exception:  # noqa: BLE001 - a label for the table, never worth failing for
        return "?"


def _size_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


@dataclasses.dataclass
class _Artefact:
    path: Path
    format: str
    size_bytes: int
    precision: str
    input_size: int
    input_dtype: str
    labels: tuple[str, ...]
    labels_source: str
    assumed: tuple[str, ...]
    compile_report: dict | None


def _probe(path: Path, trust_model: bool = False) -> _Artefact:
    """Open the file once here, so a broken file fails before any benchmark runs."""
    from edgetl.runtime import model_format, open_session

    fmt = model_format(path)
    session = open_session(path, threads=1, trust_model=trust_model)
    info = session.info()
    report = None
    report_file = path.parent / "report.json"
    if report_file.is_file():
        try:
            report = json.loads(report_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            report = None
        # A report.json of another shape (hand-edited, another tool's) is not this file's compile
        # report: ignored, as an unreadable one is, rather than failing the bench after its runs.
        if report is not None and report_shape_problem(report):
            report = None
    art = _Artefact(
        path=path,
        format=fmt,
        size_bytes=_size_bytes(path),
        precision=file_precision(path, fmt),
        input_size=session.input_size,
        input_dtype=session.input_dtype,
        labels=tuple(info.labels),
        labels_source=info.source,
        assumed=tuple(info.assumed),
        compile_report=report,
    )
    del session
    return art


# --------------------------------------------------------------------------------------------
# Evaluation data
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class EvalData:
    root: Path
    classes: list[str]
    labels: np.ndarray  # index into `classes`, per image
    paths: list[Path]
    split: str  # what was used, in words
    skipped: list[dict]


def scan_eval_data(root: Path, compile_config: dict | None = None, compile_data: str | None = None) -> EvalData:
    """Images to score from `root`: DIR/<class>/*, or DATA/train|val|test/<class>/* (its test split).

    For a DATA folder without test/, and for the very folder of class folders the compile read
    (`compile_data`, the report's dataset root), the test split is carved exactly as `edgetl
    compile` did (its seed, fractions and selection, from the report beside the model): scoring
    the whole folder would score the images it trained on. Under cross-validation the compile
    carved none and trained on every image, so there is no held-out split to score: that is an
    error, not a score of training images called a test.
    """
    from edgetl.compiler.data.datasets import scan_dataset

    root = Path(root).expanduser()
    # One class is enough to score (e.g. photos of one kind taken on the device); training needs two.
    ds = scan_dataset(root, val_fraction=0.0, test_fraction=0.0, min_classes=1)
    compiled_from_it = compile_data is not None and Path(compile_data).expanduser().resolve() == ds.root.resolve()
    if ds.layout == "class-folders" and not compiled_from_it:
        samples, split = ds.splits["train"], f"every image in the class folders of {ds.root}"
    elif ds.splits["test"]:
        samples, split = ds.splits["test"], f"the test/ split of {ds.root}"
    else:
        cfg = compile_config or {}
        seed = int(cfg.get("seed", 0))
        val, test = float(cfg.get("val_fraction", 0.15)), float(cfg.get("test_fraction", 0.15))
        selection, cv_below = str(cfg.get("selection", "auto")), int(cfg.get("cv_below", 600))
        ds = scan_dataset(root, val_fraction=val, test_fraction=test, seed=seed, selection=selection, cv_below=cv_below)
        samples = ds.splits["test"]
        how = "did" if compile_config else "does by default"
        source = f"{ds.root}/train" if ds.layout == "splits" else f"{ds.root}, the folder the model was compiled from,"
        if not samples and ds.selection == "cv":
            raise DataError(
                f"{source} holds no held-out images: edgetl compile {how} not carve a test split from it but cross-validated "
                f"and trained on all {len(ds.splits['train'])} images, so scoring them would not be a held-out figure; pass images the model "
                "did not train on (DIR/<class>/*), or leave out --data to time the files only")
        split = (f"the test split carved from {source} (seed {seed}, val {val:g}, test {test:g}, "
                 f"as edgetl compile {how})")
    if not samples:
        raise DataError(f"no usable images to score in {ds.root}; pass a folder of class folders with images")
    return EvalData(
        root=ds.root,
        classes=list(ds.classes),
        labels=np.array([s.label for s in samples], dtype=np.int64),
        paths=[s.path for s in samples],
        split=split,
        skipped=[{"path": s.path.as_posix(), "reason": s.reason} for s in ds.skipped],
    )


def _why_no_labels(art: _Artefact) -> str:
    """Why a file has no labels: nothing beside it, or a file beside it that was ignored (and why)."""
    ignored = [note for note in art.assumed if "ignored" in note]
    return "; ".join(ignored) if ignored else "no model_info.json or labels.txt beside it"


def map_labels(data: EvalData, art: _Artefact) -> np.ndarray:
    """Data labels -> the model's output indices, matched by class name."""
    if art.labels_source == "assumed":
        raise DataError(
            f"{art.path} comes without labels ({_why_no_labels(art)}), so the "
            f"class folders of {data.root} cannot be matched to its outputs; put a labels.txt (one "
            "name per line, in output order) beside it"
        )
    index = {label: i for i, label in enumerate(art.labels)}
    unknown = [c for c in data.classes if c not in index]
    if unknown:
        shown = ", ".join(f"'{c}'" for c in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        known = ", ".join(art.labels[:8]) + (", ..." if len(art.labels) > 8 else "")
        raise DataError(
            f"class folder{'s' if len(unknown) > 1 else ''} {shown} in {data.root} "
            f"{'are not classes' if len(unknown) > 1 else 'is not a class'} of {art.path.name} (its labels: "
            f"{known}); remove {'those folders' if len(unknown) > 1 else 'that folder'} from --data or bench a model trained on it"
        )
    return np.array([index[data.classes[y]] for y in data.labels], dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def default_out(config: BenchConfig, files: list[Path]) -> Path:
    if config.out:
        return Path(config.out)
    first = Path(config.models[0]).expanduser()
    folder = first if first.is_dir() and not (first / "saved_model.pb").is_file() else files[0].parent
    return folder / "bench"


def plan_cases(arts: list[_Artefact], runtimes: tuple[str, ...] | None, threads: tuple[int, ...]) -> list[dict]:
    from edgetl.runtime import RUNTIMES

    cases = []
    for art in arts:
        names = [n for n, s in RUNTIMES.items() if s.format == art.format and (n in runtimes if runtimes else s.default)]
        for name in names:
            if RUNTIMES[name].device == "gpu":
                cases.append({"art": art, "runtime": name, "threads": None})
            else:
                cases.extend({"art": art, "runtime": name, "threads": t} for t in threads)
    return cases


def run_worker(spec: dict, workdir: Path, index: int, timeout: float) -> dict:
    """Run one case (see `_worker.run_case` for `spec`) in a fresh process; always a result dict."""
    spec_file, result_file = workdir / f"case{index}.json", workdir / f"case{index}.result.json"
    spec_file.write_text(json.dumps(spec), encoding="utf-8")
    cmd = [sys.executable, "-m", "edgetl.benchmarks._worker", str(spec_file), str(result_file)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {timeout:.0f} s"}
    if result_file.is_file():
        try:
            return json.loads(result_file.read_text(encoding="utf-8"))
        except ValueError:
            pass
    tail = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()][-1:] or ["no output"]
    return {"status": "failed", "reason": f"worker exited with code {proc.returncode}: {tail[0][:200]}"}


def run_bench(config: BenchConfig, log: Callable[[str], object] | None = None) -> dict:
    """Run every case; write bench.json (and bench.png) atomically; return the report."""
    from edgetl import __version__
    from edgetl.benchmarks import environment
    from edgetl.benchmarks.environment import usable_cores
    from edgetl.atomic import atomic_write_text

    log = log or (lambda msg: print(msg, file=sys.stderr))
    started = time.perf_counter()
    for name, value, low in (("batch", config.batch, 1), ("runs", config.runs, 1), ("warmup", config.warmup, 0)):
        if value < low:
            raise BenchSettingsError(f"--{name} must be at least {low}, got {value}")
    runtimes = resolve_runtimes(config.runtimes)
    cores = check_cores(config.cores)
    env = environment.collect(list(cores) if cores else None)  # before any work of ours loads the CPU
    available = len(cores) if cores else len(usable_cores())
    threads = config.threads or (available,)
    over = sorted(t for t in set(threads) if t > available)
    if over:
        log(f"note: --threads {','.join(map(str, over))} is more than the {available} core(s) this bench may use; "
            "those rows measure threads waiting for cores, not what the device would do")
    files = discover_models(config.models, include_keras=bool(runtimes and "keras" in runtimes), log=log)
    out_dir = default_out(config, files)
    check_out_dir(out_dir, config.overwrite)
    arts = [_probe(f, config.trust_model) for f in files]
    cases = plan_cases(arts, runtimes, tuple(threads))
    if not cases:
        kinds = ", ".join(sorted({a.format for a in arts}))
        raise BenchSettingsError(f"--runtime {','.join(runtimes or ())} runs none of the files given ({kinds} files)")

    data = None
    y_by_file: dict[Path, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="edgetl-bench-") as tmp:
        workdir = Path(tmp)
        npy: dict[int, Path] = {}
        if config.data:
            compiled = arts[0].compile_report or {}
            data = scan_eval_data(config.data, compiled.get("config"), (compiled.get("dataset") or {}).get("root"))
            for art in arts:
                y_by_file[art.path] = map_labels(data, art)
            npy = _load_eval_images(data, {a.input_size for a in arts}, workdir, log)

        if config.corruptions and not config.data:
            raise BenchSettingsError("--corruptions scores accuracy under camera corruptions: give the labelled images with --data DIR")
        robustness = _score_corruptions(arts, npy, y_by_file, max(threads), log) if config.corruptions else None

        log(f"benchmarking {len(cases)} case(s) on {environment.one_line(env)}")
        for warning in env["warnings"]:
            log(f"warning: {warning}")
        rows = []
        for i, case in enumerate(cases, 1):
            art, runtime, n_threads = case["art"], case["runtime"], case["threads"]
            spec = {
                "path": str(art.path),
                "runtime": runtime,
                "threads": n_threads,
                "cores": list(cores) if cores else None,
                "batch": config.batch,
                "warmup": config.warmup,
                "runs": config.runs,
                "min_time": config.min_time,
                "input_npy": str(npy[art.input_size]) + ".first.npy" if art.input_size in npy else None,
                "eval_npy": str(npy[art.input_size]) if art.input_size in npy else None,
                "eval_batch": _eval_batch(art),
                "trust_model": config.trust_model,
            }
            label = f"[{i}/{len(cases)}] {art.path.name} {runtime}" + (f" threads={n_threads}" if n_threads else "")
            result = run_worker(spec, workdir, i, _CASE_TIMEOUT_S + 2 * config.min_time)
            row = _row(art, runtime, n_threads, result, cores)
            if "predictions" in result and art.path in y_by_file:
                preds = np.asarray(result["predictions"], dtype=np.int64)
                truth = y_by_file[art.path]
                correct = int((preds == truth).sum())
                row["accuracy"] = {"value": float((preds == truth).mean()), "images": int(truth.size), "correct": correct,
                                   "ci95": list(wilson_interval(correct, int(truth.size)))}
            rows.append(row)
            log(f"{label}: {_short(row)}")

    report = {
        "edgetl_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {**config.to_json(), "threads": list(threads), "runtimes": list(runtimes) if runtimes else None,
                     "eval_batch": sorted({_eval_batch(a) for a in arts}),
                     "latency": "per Session.invoke on an input prepared once: copy in, inference, copy out"},
        "environment": env,
        "data": None if data is None else {
            "root": str(data.root), "images": int(data.labels.size), "classes": data.classes,
            "used": data.split, "skipped": data.skipped,
        },
        "files": [
            {"file": a.path.name, "path": str(a.path), "format": a.format, "size_bytes": a.size_bytes,
             "precision": a.precision, "input_size": a.input_size, "input_dtype": a.input_dtype,
             "labels_from": a.labels_source, "assumed": list(a.assumed),
             "compile_accuracy": _compile_accuracy(a), "compile_accuracy_images": _compile_accuracy(a, "images")}
            for a in arts
        ],
        "results": rows,
        "robustness": robustness,
        "wall_s": round(time.perf_counter() - started, 1),
        "load_average_end": _load_average(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    report["outputs"] = {"json": str(out_dir / BENCH_JSON)}
    (out_dir / BENCH_PNG).unlink(missing_ok=True)  # an earlier bench's chart never sits beside these figures
    if config.chart and any(r["status"] == "ok" for r in rows):
        from edgetl.benchmarks.chart import plot_bench

        report["outputs"]["chart"] = str(plot_bench(report, out_dir / BENCH_PNG))
    atomic_write_text(out_dir / BENCH_JSON, json.dumps(report, indent=2) + "\n")
    return report


def _score_corruptions(arts: list[_Artefact], npy: dict[int, Path], y_by_file: dict, threads: int, log) -> dict:
    """Each file on the corruption suite of the --data images, in this process (one suite per
    input size, every file of that size in one table)."""
    from edgetl.compiler.evaluation.robustness import score_robustness, session_predictor
    from edgetl.runtime import open_session

    sections = {}
    for size in sorted({a.input_size for a in arts}):
        group = [a for a in arts if a.input_size == size]
        names = {a.path: f"{a.path.name} ({a.precision})" for a in group}
        predictors = {names[a.path]: session_predictor(open_session(a.path, threads=threads), _eval_batch(a)) for a in group}
        section = score_robustness(predictors, np.load(npy[size]), y_by_file[group[0].path], images_from="the --data images")
        for a in group[1:]:  # one label mapping per table: files of one size must agree on their classes
            if not np.array_equal(y_by_file[a.path], y_by_file[group[0].path]):
                raise BenchSettingsError(f"{a.path.name} orders its classes differently from {group[0].path.name}: bench them apart")
        w = section["weakest"]
        log(f"corruptions at {size} px: weakest for {w['model']}: {w['corruption']} "
            f"({describe_accuracy(w['accuracy'], section['images'])}); {section['seconds']:.0f} s")
        sections[str(size)] = section
    return sections


def _load_eval_images(data: EvalData, sizes: set[int], workdir: Path, log) -> dict[int, Path]:
    from edgetl.compiler.data.datasets import Sample, load_images
    from edgetl.compiler.progress import progress_bar

    samples = [Sample(p, int(y)) for p, y in zip(data.paths, data.labels)]
    out = {}
    for size in sorted(sizes):
        with progress_bar(f"load {len(samples)} images at {size} px", len(samples)) as advance:
            images, _ = load_images(samples, size, progress=advance)
        path = workdir / f"eval_{size}.npy"
        np.save(path, images)
        np.save(str(path) + ".first.npy", images[:1])
        out[size] = path
    log(f"scoring on {data.labels.size} images: {data.split}"
        + (f" ({len(data.skipped)} unreadable file(s) skipped)" if data.skipped else ""))
    return out


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse, before any run, an --out folder the results could not be written to or that holds
    an earlier bench's files (the user's: another run must not replace them unasked)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise BenchSettingsError(f"--out {out_dir} is a file, not a folder; pass a folder for bench.json and bench.png")
    earlier = [name for name in (BENCH_JSON, BENCH_PNG) if (out_dir / name).exists()]
    if earlier and not overwrite:
        raise BenchSettingsError(f"{out_dir} already holds {' and '.join(earlier)} from an earlier bench; pass --overwrite "
                                 "to replace them, or --out another folder")
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise BenchSettingsError(f"--out {out_dir} is below {existing}, a file; pass a folder for bench.json and bench.png")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BenchSettingsError(f"--out {out_dir}: cannot write in {existing} (permission denied); pass another folder")


def _eval_batch(art: _Artefact) -> int:
    """The batch size the compile evaluated this file with (float results may depend on it)."""
    value = ((art.compile_report or {}).get("config") or {}).get("batch_size")
    return int(value) if isinstance(value, int) and value > 0 else EVAL_BATCH


def _compile_accuracy(art: _Artefact, field: str = "accuracy"):
    """The test accuracy `edgetl compile` reported for this very file (or another field of that
    test record: "images"), if its report is beside it."""
    for a in (art.compile_report or {}).get("artifacts", []):
        if a.get("file") == art.path.name and isinstance(a.get("test"), dict):
            return a["test"].get(field)
    return None


def _row(art: _Artefact, runtime: str, threads: int | None, result: dict, cores) -> dict:
    row = {
        "file": art.path.name,
        "path": str(art.path),
        "format": art.format,
        "precision": art.precision,
        "size_bytes": art.size_bytes,
        "runtime": runtime,
        "threads": threads,
        "status": result.get("status", "failed"),
    }
    if row["status"] != "ok":
        row["reason"] = result.get("reason", "unknown")
        return row
    keep = ("import_s", "load_s", "first_run_ms", "runs", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms",
            "min_ms", "max_ms", "throughput_ips", "peak_rss_mb", "model_memory_mb", "rss_before_load_mb", "cores",
            "eval_s")
    row.update({k: result[k] for k in keep if k in result})
    session = result.get("session", {})
    row["device"] = session.get("device")
    row["input_dtype"] = session.get("input_dtype")
    if session.get("providers"):
        row["providers"] = session["providers"]
    notes = []
    if session.get("note"):
        notes.append(session["note"])
    if row["device"] == "gpu":
        notes.append("load includes GPU init/engine build; first run apart")
    if threads and cores and threads > len(cores):
        notes.append(f"{threads} threads on {len(cores)} pinned core(s)")
    if notes:
        row["note"] = "; ".join(notes)
    return row


def _short(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row['reason']}"
    acc = f", accuracy {describe_accuracy(row['accuracy']['value'], row['accuracy']['images'])}" if row.get("accuracy") else ""
    return f"p50 {row['p50_ms']:.3f} ms, load {row['load_s']:.2f} s{acc}"
