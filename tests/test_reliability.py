"""Nothing lost, nothing mislabelled, nothing half-done that looks finished (issue 13).

One test (or a few) per reproduction case of the issue, numbered as there. Cases that must train
use the tiny registered model and generated colour images, and are marked slow.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_color_dataset
from edgetl.compiler.spec.config import CompileConfig
from edgetl.compiler.outputs import (
    LOCK_FILE,
    RUN_MARKER,
    STAGING_DIR,
    BuildOutput,
    OutputLock,
    incomplete_build_warning,
)
from edgetl.compiler.pipeline import compile_model
from edgetl.errors import DataError, EdgetlError, OutputInUseError, OutputLocationError, SettingError

FAST = dict(
    use_cache=False, selection="holdout", quantize="fp32", teacher="tiny_cnn", teacher_weights="none",
    finetune_epochs=1, student="none", baseline=False,
)
FAST_ARGS = [
    "--teacher", "tiny_cnn", "--teacher-weights", "none", "--student", "none",
    "--finetune-epochs", "1", "--no-baseline", "--quantize", "fp32", "--selection", "holdout", "--no-cache",
]


def run_cli(*args, capsys):
    from edgetl.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def one_error_line(err: str) -> str:
    """The single 'error:' line a failing command prints last (no traceback, no internal error)."""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert "Traceback" not in err and "internal error" not in err
    return errors[0]


@pytest.fixture
def data(tmp_path) -> Path:
    return write_color_dataset(tmp_path / "base", per_class=10)


# 1. Build outputs must never be trained as data.


def test_1_out_inside_data_is_refused_before_anything_is_created(data):
    out = data / "red" / "build"
    with pytest.raises(OutputLocationError, match="inside DATA"):
        compile_model(CompileConfig(data=data, out=out, **FAST))
    assert not out.exists()


def test_1_a_build_inside_data_is_never_taken_as_a_class(data, tmp_path):
    old = data / "red" / "build"  # a build left inside the data (e.g. by an older edgetl)
    (old / "app" / "golden").mkdir(parents=True)
    write_color_dataset(old / "app" / "golden", classes=("green",), per_class=2)
    (old / "report.json").write_text("{}")
    (old / "manifest.json").write_text("{}")
    out = tmp_path / "elsewhere"
    with pytest.raises(DataError, match="holds an edgetl build") as info:
        compile_model(CompileConfig(data=data, out=out, **FAST))
    assert str(old) in str(info.value)
    assert not out.exists()


# 2. `cd photos && edgetl compile .`: a clear refusal, and nothing left in the data.


def test_2_compile_dot_inside_the_data_is_refused_and_leaves_nothing(data, capsys, monkeypatch):
    monkeypatch.chdir(data)
    before = sorted(p.name for p in data.iterdir())
    code, _, err = run_cli("compile", ".", "--teacher", "tiny_cnn", capsys=capsys)
    assert code == 1
    line = one_error_line(err)
    assert "inside DATA" in line and "--out" in line
    assert sorted(p.name for p in data.iterdir()) == before  # no build/ folder created


# 3. Zero epochs skip a stage.


@pytest.mark.slow
def test_3_zero_epochs_skip_fine_tuning_and_distillation(data, tmp_path):
    config = CompileConfig(
        data=data, out=tmp_path / "out",
        **{**FAST, "finetune_epochs": 0, "student": "tiny_cnn", "student_weights": "none", "student_size": 24, "distill_epochs": 0},
    )
    report = compile_model(config)
    assert report["models"]["teacher"]["training"]["top"]["epochs_run"] == 0
    assert report["models"]["student"]["training"]["distillation"]["stage"]["epochs_run"] == 0
    assert (tmp_path / "out" / "model.tflite").is_file()


# 4. A file that fails the target check never keeps its final name.


def test_4_a_precision_the_target_cannot_run_is_refused_before_any_work(data, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SettingError, match="--quantize 'fp32' cannot deploy to --target edgetpu"):
        compile_model(CompileConfig(data=data, out=out, **{**FAST, "target": "edgetpu"}))
    # So is an input type it cannot take (found by a newcomer: it failed after the whole compile).
    for io_dtype in ("float32", "int8"):
        with pytest.raises(SettingError, match=f"--io-dtype '{io_dtype}' cannot deploy to --target edgetpu, whose model input must be uint8"):
            CompileConfig(data=data, out=out, **{**FAST, "target": "edgetpu", "quantize": "int8", "io_dtype": io_dtype})
    CompileConfig(data=data, out=out, **{**FAST, "target": "edgetpu", "quantize": "int8", "io_dtype": "uint8"})
    assert not out.exists()


@pytest.mark.slow
def test_4_and_11_failed_target_check_deploys_nothing_and_a_corrected_run_is_accepted(data, tmp_path, monkeypatch):
    from edgetl.compiler.spec import constraints

    def failing_check(target, tflite, onnx_path):
        raise constraints.TargetConstraintError(f"{tflite.name} is not full-integer for {target.name} (test)")

    out = tmp_path / "out"
    cached = {**FAST, "use_cache": True, "cache_dir": tmp_path / "cache"}  # the corrected run reuses the teacher
    monkeypatch.setattr(constraints, "check_target", failing_check)
    with pytest.raises(constraints.TargetConstraintError):
        compile_model(CompileConfig(data=data, out=out, **{**cached, "target": "x86-cpu"}))
    # Nothing under a deployable name, anywhere; the run is marked unfinished.
    assert not list(out.rglob("model.tflite")) and not list(out.rglob("model.onnx"))
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == []
    assert (out / RUN_MARKER).is_file() and not (out / LOCK_FILE).exists()
    failed = out / STAGING_DIR / "model.unchecked.tflite"
    assert failed.is_file() and "staging" in incomplete_build_warning(failed)

    # 11. A corrected command into the same --out is accepted (no --overwrite needed: the
    # only files there are edgetl's own bookkeeping), and it leaves a finished build.
    monkeypatch.undo()
    report = compile_model(CompileConfig(data=data, out=out, **cached))
    assert (out / "model.tflite").is_file() and not (out / RUN_MARKER).exists() and not (out / STAGING_DIR).exists()
    assert report["deployed"]["tflite"] == "model.tflite"
    assert incomplete_build_warning(out / "model.tflite") is None


def test_11_edgetl_bookkeeping_alone_does_not_count_as_files_held(tmp_path):
    out = tmp_path / "out"
    (out / STAGING_DIR).mkdir(parents=True)
    (out / RUN_MARKER).write_text("some-other-run\n")
    (out / LOCK_FILE).write_text("{}")  # left by a killed compile: no process holds it
    build = BuildOutput(out, overwrite=False, run_id="this-run")
    assert build.user_files() == []
    build.check()  # no OutputExistsError, no OutputInUseError


def test_a_failure_before_any_file_leaves_no_new_out_folder(tmp_path):
    """Missing teacher weights fail before any stage writes a file: the --out that compile
    created goes with it; one the user had, or one with staged files, stays."""
    out = tmp_path / "new"
    build = BuildOutput(out, overwrite=False, run_id="r")
    build.open()
    build.fail()
    build.close()
    assert not out.exists()

    kept = tmp_path / "theirs"
    kept.mkdir()
    build = BuildOutput(kept, overwrite=False, run_id="r")
    build.open()
    build.fail()
    build.close()
    assert kept.is_dir()  # the user's folder is never removed

    staged = tmp_path / "staged"
    build = BuildOutput(staged, overwrite=False, run_id="r")
    (build.open() / "teacher.keras").write_text("x")
    build.fail()
    build.close()
    assert (staged / STAGING_DIR / "teacher.keras").is_file() and (staged / RUN_MARKER).is_file()


# 5. A kill late in the compile leaves nothing that looks deployable.


@pytest.mark.slow
def test_5_a_kill_while_packaging_leaves_no_deployable_set(data, tmp_path):
    out = tmp_path / "out"
    # With the stage cache (the default), the rerun resumes: the teacher is not trained again.
    args = [sys.executable, "-m", "edgetl.cli", "compile", str(data), "--out", str(out), *FAST_ARGS[:-1], "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    staged = out / STAGING_DIR / "model.tflite"
    deadline = time.monotonic() + 120
    while not staged.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert staged.exists(), "the compile never staged model.tflite"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.tflite").exists() and not (out / "model.onnx").exists() and not (out / "report.json").exists()
    assert (out / RUN_MARKER).is_file()
    assert "unfinished" in incomplete_build_warning(staged)
    # The dead process's lock does not block the rerun, which finishes the build.
    assert BuildOutput(out, overwrite=False).lock.holder() is None
    rerun = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming the interrupted compile" in rerun.stderr and "reusing cached teacher" in rerun.stderr
    assert (out / "model.tflite").is_file() and not (out / RUN_MARKER).exists()


def test_5_predict_warns_on_a_file_from_an_unfinished_build(tmp_path, capsys):
    from edgetl.compiler.export.convert import export_tflite
    from edgetl.models import create_model

    folder = tmp_path / "out"
    folder.mkdir()
    export_tflite(create_model("tiny_cnn", weights=None, num_classes=3), folder / "model.tflite")
    image = write_color_dataset(tmp_path / "img", classes=("red",), per_class=1) / "red" / "red_0.png"
    code, _, err = run_cli("predict", folder / "model.tflite", image, capsys=capsys)
    assert code == 0 and "warning:" not in err
    (folder / RUN_MARKER).write_text("x\n")
    code, _, err = run_cli("predict", folder / "model.tflite", image, capsys=capsys)
    assert code == 0 and "warning:" in err and "did not finish" in err
    # Beside a manifest, the files are a finished build's, and the marker a later compile's that
    # has not begun to publish (a newcomer interrupted an --overwrite recompile): no warning.
    (folder / "manifest.json").write_text("{}\n")
    code, _, err = run_cli("predict", folder / "model.tflite", image, capsys=capsys)
    assert code == 0 and "warning:" not in err


def test_5_a_publish_cut_short_never_leaves_a_manifest_beside_a_mixed_folder(tmp_path, monkeypatch):
    from edgetl.compiler import outputs

    out = tmp_path / "out"
    out.mkdir()
    for name in ("model.tflite", "report.json", "manifest.json"):  # a finished build
        (out / name).write_text("old")
    build = BuildOutput(out, overwrite=True, run_id="r")
    (build.open() / "model.tflite").write_text("new")
    removed = []

    def remove_then_die(path):
        removed.append(path.name)
        if len(removed) == 2:
            raise KeyboardInterrupt  # killed after the first removal
        path.unlink(missing_ok=True)

    monkeypatch.setattr(outputs, "_remove", remove_then_die)
    with pytest.raises(KeyboardInterrupt):
        build.publish()
    assert removed[0] == "manifest.json" and not (out / "manifest.json").exists()
    assert "did not finish" in incomplete_build_warning(out / "model.tflite")


# 6. One compile at a time per --out.


def test_6_a_second_compile_is_refused_and_a_dead_holder_does_not_block(data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from edgetl.compiler.outputs import OutputLock; OutputLock(sys.argv[1]).acquire(); "
         "print('held', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputInUseError, match=rf"in use by another edgetl compile \(pid {holder.pid} on "):
            compile_model(CompileConfig(data=data, out=out, **FAST))
        # Refused even with --overwrite, and without touching --out.
        with pytest.raises(OutputInUseError):
            compile_model(CompileConfig(data=data, out=out, **{**FAST, "overwrite": True}))
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    finally:
        holder.kill()
        holder.wait()
    # The holder died without cleaning up: its lock file remains but holds nobody.
    assert (out / LOCK_FILE).exists()
    BuildOutput(out, overwrite=False).check()
    lock = OutputLock(out)
    lock.acquire()
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (out / LOCK_FILE).exists()


# 7. Sizes that cannot fit in memory.


def test_7_a_student_size_that_cannot_fit_is_refused_in_one_line(data, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli("compile", data, "--out", out, "--teacher", "tiny_cnn", "--student", "tiny_cnn", "--student-size", "10000", capsys=capsys)
    assert code == 1
    line = one_error_line(err)
    assert "--student-size 10000" in line and "memory" in line
    assert not out.exists()


def test_7_images_that_cannot_fit_in_memory_are_refused_after_the_data_check(data, tmp_path, monkeypatch):
    from edgetl.errors import ResourceError

    real = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda name: 8 if name == "SC_PHYS_PAGES" else real(name))  # a few pages of memory
    out = tmp_path / "out"
    with pytest.raises(ResourceError, match="more than half of this machine's"):
        compile_model(CompileConfig(data=data, out=out, **FAST))
    assert not out.exists()


# 8. Recipe (and Python API) values are checked, each in one line naming the setting.


@pytest.mark.parametrize(
    "line, expected",
    [
        ("finetune_epochs: two", "--finetune-epochs 'two' must be a whole number"),
        ("batch_size: 0", "--batch-size 0 must be from 1"),
        ("teacher: [tiny_cnn, resnet50]", "--teacher ['tiny_cnn', 'resnet50'] must be a non-empty name"),
        ("alpha: 1.5", "--alpha 1.5 must be a number in [0, 1]"),
        ("data: 7", "--data 7 must be a folder path"),
    ],
)
def test_8_recipe_values_are_checked_before_any_work(data, tmp_path, capsys, line, expected):
    out = tmp_path / "out"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"data: {data}\nout: {out}\nteacher: tiny_cnn\nstudent: none\n{line}\n")
    code, _, err = run_cli("compile", "--recipe", recipe, capsys=capsys)
    assert code == 1
    assert expected in one_error_line(err)
    assert not out.exists()


def test_8_python_api_values_are_checked_too(data, tmp_path):
    with pytest.raises(SettingError, match=r"--distill-epochs -1 must be from 0 .*\(setting distill_epochs\)"):
        compile_model(CompileConfig(data=data, out=tmp_path / "out", **{**FAST, "distill_epochs": -1}))
    with pytest.raises(SettingError, match="--overwrite 'yes' must be true or false"):
        compile_model(CompileConfig(data=data, out=tmp_path / "out", **{**FAST, "overwrite": "yes"}))
    assert not (tmp_path / "out").exists()


# 9. --overwrite replaces all of edgetl's previous outputs, and only those.


@pytest.mark.slow
def test_9_overwrite_leaves_nothing_stale_and_the_manifest_lists_this_build(data, tmp_path):
    out = tmp_path / "out"
    # An earlier fp16 build with a student (written as edgetl writes them), and the user's file.
    (out / "variants").mkdir(parents=True)
    (out / "app").mkdir()
    for name in ("variants/model.fp16.tflite", "variants/model.fp16.onnx", "student.keras", "model.tflite", "app/Old.kt"):
        (out / name).write_bytes(b"earlier build")
    (out / "manifest.json").write_text(json.dumps({"artefacts": {"my_notes.txt": {}, "student.keras": {}}}))
    (out / "my_notes.txt").write_text("the user's own file")
    compile_model(CompileConfig(data=data, out=out, **{**FAST, "overwrite": True}))
    assert not list((out / "variants").glob("model.fp16.*"))
    assert not (out / "student.keras").exists() and not (out / "app" / "Old.kt").exists()
    assert (out / "model.tflite").read_bytes() != b"earlier build"
    assert (out / "my_notes.txt").read_text() == "the user's own file"
    listed = set(json.loads((out / "manifest.json").read_text())["artefacts"])
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert listed == on_disk - {"manifest.json", "my_notes.txt"}
    assert "variants/model.fp32.tflite" in listed


# 10. An unusable --out is the environment's problem, said in one line.


@pytest.mark.parametrize("where", ["proc", "below_a_file"])
def test_10_an_unusable_out_is_one_line_naming_the_path(data, tmp_path, capsys, where):
    if where == "proc":
        out = Path("/proc/edgetl-test-build")
    else:
        (tmp_path / "a_file").write_text("x")
        out = tmp_path / "a_file" / "build"
    code, _, err = run_cli("compile", data, "--out", out, *FAST_ARGS, capsys=capsys)
    assert code == 1
    line = one_error_line(err)
    assert str(out) in line or str(out.parent) in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_10_a_read_only_out_is_one_line(data, tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        code, _, err = run_cli("compile", data, "--out", parent / "build", *FAST_ARGS, capsys=capsys)
    finally:
        parent.chmod(0o755)
    assert code == 1 and "not writable" in one_error_line(err)


def test_10_a_full_disk_is_one_line_not_an_internal_error(capsys, monkeypatch, tmp_path):
    import edgetl.compiler.pipeline as pipeline

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "model.tflite"))

    monkeypatch.setattr(pipeline, "compile_model", full)
    code, _, err = run_cli("compile", tmp_path, "--out", tmp_path / "out", capsys=capsys)
    assert code == 1
    assert one_error_line(err) == f"error: cannot write {tmp_path / 'out' / 'model.tflite'}: No space left on device"


# 12. A quiet console. 13. Progress on the long silent steps.

# TensorFlow's, absl's and CUDA's own log lines: glog-style prefixes ("I0000 00:00:...",
# "E0000"), absl's start-up notice, Python-side TensorFlow warnings, retracing.
TF_NOISE = re.compile(r"^[IWEF]\d{4} |absl::|cuInit|cudart|oneDNN|^WARNING:tensorflow|^WARNING:absl|retracing|TF_ENABLE_ONEDNN")


@pytest.mark.slow
def test_12_and_13_a_small_compile_prints_no_tensorflow_lines_and_shows_progress(data, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "EDGETL_DEBUG")}  # edgetl's defaults
    result = subprocess.run(
        [sys.executable, "-m", "edgetl.cli", "compile", data, "--out", tmp_path / "out", *FAST_ARGS],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )
    assert result.returncode == 0, result.stderr
    noise = [line for line in result.stderr.splitlines() if TF_NOISE.search(line)]
    assert noise == []
    # The data check and the conversions, silent before, show what they are doing.
    assert "decode-check images" in result.stderr and "convert to TFLite" in result.stderr


def test_12_pillows_decompression_bomb_warning_becomes_one_edgetl_line(capsys):
    import warnings

    from PIL import Image

    from edgetl.compiler.pipeline import _large_images_noted

    with _large_images_noted():
        for _ in range(3):
            warnings.warn("Image size (144000000 pixels) exceeds limit", Image.DecompressionBombWarning)
    err = capsys.readouterr().err
    assert "DecompressionBombWarning" not in err
    assert "note: 3 very large image(s)" in err


def test_13_ctrl_c_says_how_to_resume(capsys, monkeypatch, tmp_path):
    import edgetl.compiler.pipeline as pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "compile_model", interrupted)
    code, _, err = run_cli("compile", tmp_path, "--out", tmp_path / "out", capsys=capsys)
    assert code == 130
    assert "rerun the same command to resume" in err.strip().splitlines()[-1]


def test_edgetl_errors_are_edgetl_errors():
    # Every new refusal is a user-facing error, printed in one line by the CLI.
    for cls in (SettingError, OutputLocationError, OutputInUseError):
        assert issubclass(cls, EdgetlError)
