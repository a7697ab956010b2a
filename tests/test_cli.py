"""The command line as a user meets it: instant help, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from edgetl.cli import main


def run_cli(*args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_help_does_not_import_tensorflow():
    code = "import sys; from edgetl.cli import app; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "edgetl.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "compile" in result.stdout
    assert time.perf_counter() - start < 10  # generous: it is ~0.2 s; TensorFlow alone takes longer


def test_models_lists_the_registry(capsys):
    code, out, _ = run_cli("models", capsys=capsys)
    assert code == 0
    for name in ("resnet50", "mobilenet_v3_small", "efficientnet_lite0", "efficientnet_lite2"):
        assert name in out
    assert "tiny_cnn" not in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["compile", "/no/such/folder"], "/no/such/folder"),
        (["compile", ".", "--teacher", "resnet5O"], "unknown model 'resnet5O'"),
        (["compile", ".", "--bogus"], "--bogus"),
        (["compile", ".", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_1(args, message, capsys, tmp_path):
    code, _, err = run_cli(*args, "--out", str(tmp_path / "out"), capsys=capsys)
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0] and message in errors[0]
    assert "Traceback" not in err


def test_one_class_folder_fails_in_one_line(tmp_path, capsys):
    from conftest import write_color_dataset

    data = write_color_dataset(tmp_path / "one", classes=("red",))
    code, _, err = run_cli("compile", str(data), "--out", str(tmp_path / "out"), capsys=capsys)
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and "class" in last and "Traceback" not in err
