"""`edgetl bench`: the timing loop, the worker processes, accuracy, outputs and errors."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgetl.benchmarks.harness import (
    BENCH_JSON,
    BENCH_PNG,
    BenchConfig,
    BenchSettingsError,
    check_out_dir,
    discover_models,
    parse_int_list,
    resolve_runtimes,
    run_bench,
    scan_eval_data,
)
from edgetl.runtime.measure import peak_rss_mb, reset_peak_rss, time_calls
from edgetl.errors import DataError, ModelFileError

from test_runtime import LABELS, SIZE, _one_error_line, build_tiny_artefacts, run_cli  # noqa: E402

LINUX = sys.platform.startswith("linux")


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return build_tiny_artefacts(tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    from conftest import write_color_dataset

    return write_color_dataset(tmp_path_factory.mktemp("eval") / "colors", classes=LABELS, per_class=5, size=40)


@pytest.fixture(scope="module")
def bench(art, eval_dir, tmp_path_factory):
    """One real run over the compiled folder: every default runtime, 1 thread, with accuracy."""
    out = tmp_path_factory.mktemp("bench_out")
    config = BenchConfig(models=(art["folder"],), data=eval_dir, threads=(1,), runs=20, warmup=2, out=out,
                         cores=(0,) if LINUX else None)
    messages: list[str] = []
    return run_bench(config, log=messages.append), out, messages


# --------------------------------------------------------------------------------------------
# The timing loop
# --------------------------------------------------------------------------------------------


def test_time_calls_counts_and_orders():
    calls = []
    timing = time_calls(lambda: calls.append(1), warmup=3, runs=25)
    assert len(calls) == 1 + 3 + 25 and len(timing.samples_ms) == 25
    stats = timing.stats()
    assert stats["runs"] == 25
    assert stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= stats["max_ms"]


def test_time_calls_measures_what_it_times():
    timing = time_calls(lambda: time.sleep(0.004), warmup=1, runs=15)
    stats = timing.stats(batch=2)
    assert 3.9 <= stats["p50_ms"] < 30  # sleep never returns early; a loaded machine may be late
    assert stats["throughput_ips"] == pytest.approx(2000 / stats["mean_ms"], rel=1e-3)


def test_time_calls_honours_min_time():
    start = time.perf_counter()
    timing = time_calls(lambda: None, warmup=0, runs=1, min_time=0.2)
    assert time.perf_counter() - start >= 0.2 and len(timing.samples_ms) > 1


def test_first_call_is_reported_apart():
    state = {"n": 0}

    def slow_first():
        state["n"] += 1
        time.sleep(0.03 if state["n"] == 1 else 0.0)

    timing = time_calls(slow_first, warmup=0, runs=5)
    assert timing.first_ms >= 29 and max(timing.samples_ms) < 20


@pytest.mark.skipif(not LINUX, reason="VmHWM and clear_refs are Linux")
def test_peak_memory_is_this_process_and_can_be_reset():
    if not reset_peak_rss():
        pytest.skip("/proc/self/clear_refs not writable here")
    base = peak_rss_mb()  # the peak is now the current resident size
    block = np.ones(80 * 2**20, np.uint8)  # 80 MB, touched
    assert peak_rss_mb() >= base + 70
    del block
    assert reset_peak_rss() and peak_rss_mb() < base + 40


# --------------------------------------------------------------------------------------------
# Options and files
# --------------------------------------------------------------------------------------------


def test_parse_int_list():
    assert parse_int_list("1,2,4", "threads") == (1, 2, 4)
    assert parse_int_list("0-2,5,1", "cores") == (0, 1, 2, 5)
    for bad, what in (("two", "threads"), ("0", "threads"), ("3-1", "cores"), ("1-2", "threads"), (",", "cores"),
                      ("1,100000", "threads")):  # LiteRT crashed the process at 100,000 threads
        with pytest.raises(BenchSettingsError, match=f"--{what}"):
            parse_int_list(bad, what)


def test_resolve_runtimes():
    assert resolve_runtimes(None) is None
    assert resolve_runtimes(("litert", "ONNXRUNTIME")) == ("litert", "onnxruntime")
    assert set(resolve_runtimes(("gpu",))) == {"litert-gpu", "onnxruntime-cuda", "onnxruntime-tensorrt"}
    with pytest.raises(BenchSettingsError, match="'tensorflow' is not a runtime"):
        resolve_runtimes(("tensorflow",))


def test_discover_models(art, tmp_path):
    found = discover_models((art["folder"],))
    assert sorted(p.name for p in found) == ["model.onnx", "model.tflite"]  # not teacher.keras, not json
    assert len(discover_models((art["folder"], art["folder"] / "model.onnx"))) == 2  # no duplicates
    assert "teacher.keras" in {p.name for p in discover_models((art["folder"],), include_keras=True)}
    (tmp_path / ".model.abc.tflite").write_bytes(b"half written")  # an atomic write in progress
    with pytest.raises(ModelFileError, match="no .tflite or .onnx file in folder"):
        discover_models((tmp_path,))
    with pytest.raises(ModelFileError, match="not found"):
        discover_models((tmp_path / "nope",))


def test_a_folder_s_file_repeated_in_variants_is_benchmarked_once(art, tmp_path):
    """The deployed model.tflite is also its variant in variants/: one file, one row."""
    build = tmp_path / "build"
    (build / "variants").mkdir(parents=True)
    tflite = (art["folder"] / "model.tflite").read_bytes()
    (build / "model.tflite").write_bytes(tflite)
    (build / "variants" / "model.int8.tflite").write_bytes(tflite)
    (build / "variants" / "model.fp32.tflite").write_bytes(tflite + b"\0")  # other bytes: kept
    said = []
    found = discover_models((build,), log=said.append)
    assert [p.relative_to(build).as_posix() for p in found] == ["model.tflite", "variants/model.fp32.tflite"]
    assert said == ["variants/model.int8.tflite: the same file as model.tflite, benchmarked once"]


# --------------------------------------------------------------------------------------------
# A real run
# --------------------------------------------------------------------------------------------


def test_bench_rows_cover_every_file_and_runtime(bench):
    report, _, messages = bench
    rows = {(r["file"], r["runtime"]): r for r in report["results"]}
    assert set(rows) == {
        ("model.tflite", "litert"), ("model.tflite", "litert-gpu"),
        ("model.onnx", "onnxruntime"), ("model.onnx", "onnxruntime-cuda"), ("model.onnx", "onnxruntime-tensorrt"),
    }
    for key in (("model.tflite", "litert"), ("model.onnx", "onnxruntime")):
        r = rows[key]
        assert r["status"] == "ok" and r["threads"] == 1 and r["runs"] == 20
        assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["load_s"] > 0 and r["first_run_ms"] > 0 and r["peak_rss_mb"] > 10
        assert r["size_bytes"] == Path(r["path"]).stat().st_size and r["precision"] == "fp32"
        if LINUX:
            assert r["cores"] == [0]  # the worker really ran pinned
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        cuda = rows[("model.onnx", "onnxruntime-cuda")]
        assert cuda["status"] == "skipped"
        assert cuda["reason"].startswith("CUDAExecutionProvider not available; install edgetl[gpu]")
    assert len(messages) >= len(rows)  # one progress line per case


def test_bench_accuracy_is_exactly_the_in_process_accuracy(bench, art, eval_dir):
    from edgetl.compiler.data.datasets import load_images
    from edgetl.runtime import open_session

    report, _, _ = bench
    data = scan_eval_data(eval_dir)
    assert data.classes == sorted(LABELS) and report["data"]["images"] == len(data.paths) == 15
    from edgetl.compiler.data.datasets import Sample

    x, y = load_images([Sample(p, int(t)) for p, t in zip(data.paths, data.labels)], SIZE)
    truth = np.array([LABELS.index(data.classes[t]) for t in y])  # folder order is not label order
    for r in report["results"]:
        if r["status"] != "ok":
            continue
        expected = float((open_session(r["path"]).predict(x).argmax(1) == truth).mean())
        assert r["accuracy"]["value"] == expected and r["accuracy"]["images"] == 15


def test_photos_of_one_class_are_scored(art, eval_dir, tmp_path):
    # Photos of one kind taken on the device: enough to score, though a compile needs two classes.
    one = tmp_path / "device"
    shutil.copytree(eval_dir / LABELS[1], one / LABELS[1])
    data = scan_eval_data(one)
    assert data.classes == [LABELS[1]] and len(data.paths) == 5
    config = BenchConfig(models=(art["tflite"],), data=one, threads=(1,), runs=2, warmup=0, out=tmp_path / "o", chart=False)
    report = run_bench(config, log=lambda m: None)
    (row,) = [r for r in report["results"] if r["status"] == "ok"]
    assert row["accuracy"]["images"] == 5


def test_bench_writes_json_and_chart_atomically(bench):
    report, out, _ = bench
    assert sorted(p.name for p in out.iterdir()) == [BENCH_JSON, BENCH_PNG]  # no temporary left
    saved = json.loads((out / BENCH_JSON).read_text())
    assert saved["results"] == report["results"]
    env = saved["environment"]
    assert env["cpu"]["model"] and env["cpu"]["logical_cores"] >= 1 and env["python"]
    assert {"ai-edge-litert", "onnxruntime", "numpy"} <= set(env["packages"])
    if LINUX:
        assert env["cpu"]["pinned_cores"] == [0] and isinstance(env["cpu"]["flags"], list)
    assert (out / BENCH_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runtime_filter_and_threads(art, tmp_path):
    said = []
    report = run_bench(BenchConfig(models=(art["onnx"], art["int8"]), runtimes=("litert",), threads=(1, 2),
                                   cores=(0,) if LINUX else None, runs=3, warmup=0, out=tmp_path, chart=False), log=said.append)
    if LINUX:  # pinned to one core, 2 threads wait for it: the bench says so
        assert any(line.startswith("note: --threads 2 is more than the 1 core(s)") for line in said), said
    assert [(r["file"], r["runtime"], r["threads"]) for r in report["results"]] == [
        ("model_int8.tflite", "litert", 1), ("model_int8.tflite", "litert", 2)]
    assert report["results"][0]["precision"] == "int8" and report["results"][0]["input_dtype"] == "uint8"
    assert not (tmp_path / BENCH_PNG).exists()
    with pytest.raises(BenchSettingsError, match="runs none of the files"):
        run_bench(BenchConfig(models=(art["onnx"],), runtimes=("litert",), out=tmp_path / "none"), log=lambda m: None)


# --------------------------------------------------------------------------------------------
# Accuracy data: layouts and mismatches
# --------------------------------------------------------------------------------------------


def test_eval_data_layouts(tmp_path):
    from conftest import write_color_dataset

    root = tmp_path / "DATA"
    write_color_dataset(root / "train", classes=LABELS, per_class=10)
    carved = scan_eval_data(root, {"seed": 3, "val_fraction": 0.2, "test_fraction": 0.3, "selection": "holdout"})
    assert "carved" in carved.split and "seed 3" in carved.split and len(carved.paths) == 9  # 3 per class
    # A compile that cross-validated (30 images, below its cv_below) carved no test split and
    # trained on every image: none of them is a held-out score, with or without its report.
    for compiled in ({"seed": 3, "val_fraction": 0.2, "test_fraction": 0.3, "selection": "auto", "cv_below": 600}, None):
        with pytest.raises(DataError, match="trained on all 30 images, so scoring them would not be a held-out figure"):
            scan_eval_data(root, compiled)
    from edgetl.compiler.data.datasets import scan_dataset

    compile_test = scan_dataset(root, val_fraction=0.2, test_fraction=0.3, seed=3).splits["test"]
    assert carved.paths == [s.path for s in compile_test]  # the very images the compile tested on
    write_color_dataset(root / "test", classes=LABELS, per_class=2, seed=9)
    given = scan_eval_data(root)
    assert "test/ split" in given.split and len(given.paths) == 6
    # Class folders are scored whole, unless they are the folder the model was compiled from:
    # then, as for DATA/train, the compile's own carve or nothing (never its training images).
    flat = root / "train"
    assert len(scan_eval_data(flat).paths) == 30 and "every image" in scan_eval_data(flat).split
    holdout = {"seed": 3, "val_fraction": 0.2, "test_fraction": 0.3, "selection": "holdout"}
    own = scan_eval_data(flat, holdout, compile_data=str(flat))
    assert own.paths == [s.path for s in scan_dataset(flat, val_fraction=0.2, test_fraction=0.3, seed=3).splits["test"]]
    assert "the folder the model was compiled from" in own.split and len(own.paths) == 9
    with pytest.raises(DataError, match="trained on all 30 images"):
        scan_eval_data(flat, {**holdout, "selection": "cv"}, compile_data=str(flat))


def test_unknown_class_folder_is_one_clear_error(art, eval_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(eval_dir, data)
    (data / "purple").mkdir()
    shutil.copy(next((data / "red").iterdir()), data / "purple" / "p.png")
    with pytest.raises(DataError, match="class folder 'purple' .* is not a class of model.tflite"):
        run_bench(BenchConfig(models=(art["tflite"],), data=data, out=tmp_path / "o"), log=lambda m: None)


def test_model_without_labels_cannot_be_scored(art, eval_dir, tmp_path):
    bare = tmp_path / "m.tflite"
    shutil.copy(art["tflite"], bare)
    with pytest.raises(DataError, match="comes without labels"):
        run_bench(BenchConfig(models=(bare,), data=eval_dir, out=tmp_path / "o"), log=lambda m: None)


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def test_bench_command_prints_the_table(art, tmp_path, capsys):
    code, out, err = run_cli("bench", art["folder"], "--threads", "1", "--runs", "5", "--warmup", "1",
                             "--out", tmp_path, capsys=capsys)
    assert code == 0, err
    assert "model.tflite" in out and "model.onnx" in out and "p50 ms" in out
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert "skipped: CUDAExecutionProvider not available" in out and "edgetl[gpu]" in out
    assert f"wrote {tmp_path / BENCH_JSON}" in err
    assert (tmp_path / BENCH_JSON).is_file()
    first = (tmp_path / BENCH_JSON).read_bytes()
    # A second bench into the same folder keeps the first one's figures unless told otherwise.
    again = ("bench", art["folder"] / "model.tflite", "--runtime", "litert", "--threads", "1", "--runs", "2", "--warmup", "0", "--out", tmp_path)
    code, _, err = run_cli(*again, capsys=capsys)
    assert code == 1 and "--overwrite" in _one_error_line(err)
    assert (tmp_path / BENCH_JSON).read_bytes() == first
    code, _, err = run_cli(*again, "--overwrite", capsys=capsys)
    assert code == 0, err
    assert [r["file"] for r in json.loads((tmp_path / BENCH_JSON).read_text())["results"]] == ["model.tflite"]


def test_an_out_folder_that_cannot_take_the_results_is_refused_before_any_run(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(BenchSettingsError, match="below .*afile, a file"):
        check_out_dir(tmp_path / "afile" / "sub", overwrite=False)
    with pytest.raises(BenchSettingsError, match="is a file, not a folder"):
        check_out_dir(tmp_path / "afile", overwrite=False)
    # An earlier bench's chart alone is the user's too: kept unless --overwrite.
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / BENCH_PNG).write_bytes(b"png")
    with pytest.raises(BenchSettingsError, match=f"already holds {BENCH_PNG}"):
        check_out_dir(tmp_path / "o", overwrite=False)
    check_out_dir(tmp_path / "o", overwrite=True)
    check_out_dir(tmp_path / "new" / "deeper", overwrite=False)  # created when the results are written
    assert not (tmp_path / "new").exists()


def test_bench_default_out_is_the_model_folder(art, capsys):
    out = art["folder"] / "bench"
    try:
        code, _, err = run_cli("bench", art["folder"] / "model.tflite", "--runtime", "litert", "--runs", "2",
                               "--warmup", "0", "--no-chart", capsys=capsys)
        assert code == 0, err
        assert json.loads((out / BENCH_JSON).read_text())["results"][0]["file"] == "model.tflite"
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_bench_bad_input_is_one_line_and_exit_1(art, tmp_path, capsys):
    truncated = tmp_path / "t.tflite"
    truncated.write_bytes(art["tflite"].read_bytes()[:4000])
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ((tmp_path / "missing.onnx",), "not found"),
        ((truncated,), "truncated or corrupt TFLite file"),
        ((art["vector_onnx"],), "not an RGB image input"),
        ((empty,), "no .tflite or .onnx file"),
        ((art["tflite"], "--threads", "a,b"), "--threads"),
        ((art["tflite"], "--cores", "999"), "--cores 999"),
        ((art["tflite"], "--runtime", "tpu"), "'tpu' is not a runtime"),
        ((art["tflite"], "--runs", "0"), "--runs"),
        ((art["tflite"], "--data", tmp_path / "nodata"), "does not exist"),
        ((art["tflite"], "--out", truncated), "is a file, not a folder"),
    ]
    for args, message in cases:
        out = () if "--out" in args else ("--out", tmp_path / "o")
        code, _, err = run_cli("bench", *args, *out, capsys=capsys)
        assert code == 1, (args, err)
        assert message in _one_error_line(err), (args, err)
    assert not (tmp_path / "o").exists()  # nothing written when the input is bad


@pytest.mark.slow  # the Keras worker imports TensorFlow (several seconds)
def test_keras_reference_runs_when_named(art, tmp_path):
    report = run_bench(BenchConfig(models=(art["keras"],), threads=(1,), runs=3, warmup=0, out=tmp_path,
                                   chart=False), log=lambda m: None)
    (row,) = report["results"]
    assert row["runtime"] == "keras" and row["status"] == "ok"
    # The worker imports TensorFlow before loading the model: both are timed, apart.
    assert row["import_s"] > 0 and row["load_s"] > 0 and row["p50_ms"] > 0
    folder = run_bench(BenchConfig(models=(art["folder"],), runtimes=("keras",), threads=(1,), runs=3, warmup=0,
                                   out=tmp_path / "folder", chart=False), log=lambda m: None)
    assert [r["file"] for r in folder["results"]] == ["teacher.keras"]


def test_overhead_script_sides_time_the_same_model(art):
    from edgetl.benchmarks.overhead import paired_case, raw_case

    for key, runtime in (("int8", "litert"), ("onnx", "onnxruntime")):
        spec = {"path": str(art[key]), "runtime": runtime, "threads": 1, "warmup": 2, "runs": 20, "min_time": 0.0}
        paired = paired_case(spec)
        assert paired["runs"] >= 20 and paired["raw"] > 0 and paired["edgetl"] > 0
        assert raw_case(spec)["p50_ms"] > 0


def test_environment_warns_when_the_machine_is_busy(monkeypatch):
    from edgetl.benchmarks import environment

    monkeypatch.setattr(environment.os, "getloadavg", lambda: (0.1, 0.2, 0.3), raising=False)
    assert not any("load average" in w for w in environment.collect()["warnings"])
    monkeypatch.setattr(environment.os, "getloadavg", lambda: (9.0, 9.0, 9.0), raising=False)
    env = environment.collect()
    assert env["load_average"] == [9.0, 9.0, 9.0]
    assert any("load average 9 on" in w and "inflated" in w for w in env["warnings"])
