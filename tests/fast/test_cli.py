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
        (["compile", ".", "--cluster", "16"], "give --prune too"),
        (["compile", ".", "--prune", "0.5", "--cluster", "1"], "--cluster 1 must be"),
        (["compile", ".", "--threads", "100000"], "--threads"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_1(args, message, capsys, tmp_path):
    code, out, err = run_cli(*args, "--out", str(tmp_path / "out"), capsys=capsys)
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0] and message in errors[0]
    assert "Traceback" not in err
    assert "==>" not in out + err  # refused before any stage starts


def test_predict_refuses_more_threads_than_the_runtimes_survive(capsys):
    # LiteRT crashed the process at 100,000 threads and ONNX Runtime hung creating 10,000.
    from edgetl.runtime import MAX_THREADS, open_session

    from edgetl.errors import SettingError

    code, _, err = run_cli("predict", "model.tflite", "x.jpg", "--threads", "100000", capsys=capsys)
    assert code == 1 and "--threads" in err and "Traceback" not in err
    with pytest.raises(SettingError, match=f"between 1 and {MAX_THREADS}"):
        open_session("model.tflite", threads=MAX_THREADS + 1)


def test_one_class_folder_fails_in_one_line(tmp_path, capsys):
    from conftest import write_color_dataset

    data = write_color_dataset(tmp_path / "one", classes=("red",))
    code, _, err = run_cli("compile", str(data), "--out", str(tmp_path / "out"), capsys=capsys)
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and "class" in last and "Traceback" not in err


def test_compile_options_take_their_defaults_from_the_config():
    """Each default is written once, in CompileConfig: an option that is a setting carries its
    field's name and a default read from the field (`= _DEFAULT["teacher"]`), never a literal that
    could drift. With --recipe only explicit options override, so an invented default would
    silently change a replayed build."""
    import ast
    import dataclasses
    import inspect
    import textwrap

    from edgetl.compiler.spec.config import CompileConfig

    from edgetl.cli import _DEFAULT, _FIELD, _NOT_SETTINGS, compile_command

    fields = {f.name: f for f in dataclasses.fields(CompileConfig)}
    tree = ast.parse(textwrap.dedent(inspect.getsource(compile_command)))
    args = tree.body[0].args
    written = dict(zip([a.arg for a in args.args][-len(args.defaults):], args.defaults))
    settings = [name for name in inspect.signature(compile_command).parameters if name not in ("ctx", *_NOT_SETTINGS)]
    assert len(settings) > 40
    for name in settings:
        field, option = _FIELD.get(name, name), "--" + name.replace("_", "-")
        assert field in fields, f"{option} is not a CompileConfig setting"
        if fields[field].default is dataclasses.MISSING:  # data, out: required by the config, found by the CLI
            continue
        default = written[name]
        assert ast.unparse(default) == f"_DEFAULT['{field}']", f"{option} writes its default by hand: {ast.unparse(default)}"
        assert inspect.signature(compile_command).parameters[name].default == fields[field].default == _DEFAULT[field]


def test_every_option_reaches_the_config(tmp_path, capsys):
    """The settings are read from the options by name (no hand-kept list): a value given on the
    line is the value in the resolved recipe."""
    import yaml
    from conftest import write_color_dataset

    data = write_color_dataset(tmp_path / "data")
    code, stdout, err = run_cli(
        "compile", str(data), "--out", str(tmp_path / "out"), "--teacher", "tiny_cnn", "--teacher-weights", "none",
        "--student", "none", "--quantize", "fp16", "--strategy", "one", "--selection", "holdout", "--mixed-precision", "off",
        "--seed", "5", "--no-cache", "--dry-run", capsys=capsys,
    )
    assert code == 0, err
    recipe = yaml.safe_load(stdout.split("stages:")[0])
    given = {"quantize": "fp16", "strategy": "one", "selection": "holdout", "mixed_precision": "off", "seed": 5, "use_cache": False}
    assert {name: recipe[name] for name in given} == given


def test_a_choice_the_cli_does_not_offer_is_one_line_and_exit_code_1(capsys):
    code, _, err = run_cli("compile", ".", "--quantize", "int4", capsys=capsys)
    assert code == 1 and err.count("error:") == 1
    assert "--quantize" in err and "'int4' is not one of 'auto', 'fp32', 'fp16', 'dynamic', 'int8'" in err
    assert "Value error" not in err  # typer's pydantic coercion wording, not ours


def test_targets_lists_every_profile(capsys):
    from edgetl.compiler.spec.targets import TARGETS

    code, out, _ = run_cli("targets", capsys=capsys)
    assert code == 0
    for name in ("android-cpu", "android-gpu", "edgetpu", "raspberry-pi", "jetson", "x86-cpu"):
        assert name in TARGETS and name in out


def test_dry_run_prints_the_resolved_recipe_and_writes_nothing(tmp_path, capsys):
    from conftest import write_color_dataset

    data = write_color_dataset(tmp_path / "data")
    out = tmp_path / "out"
    code, stdout, _ = run_cli("compile", str(data), "--out", str(out), "--target", "raspberry-pi", "--dry-run", capsys=capsys)
    assert code == 0
    assert "quantize: int8" in stdout and "student_size: 160" in stdout and "io_dtype: uint8" in stdout
    assert "teacher" in stdout and "would run" in stdout
    assert not out.exists()


def test_a_recipe_replays_with_one_change(tmp_path, capsys):
    import yaml
    from conftest import write_color_dataset
    from edgetl.compiler.spec.config import CompileConfig

    data = write_color_dataset(tmp_path / "data")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**CompileConfig(data=data, out=tmp_path / "o", teacher="tiny_cnn", teacher_weights="none").to_json(), "seed": 7}))
    code, stdout, _ = run_cli("compile", "--recipe", str(recipe), "--quantize", "fp16", "--dry-run", capsys=capsys)
    assert code == 0
    assert "quantize: fp16" in stdout and "seed: 7" in stdout and "teacher: tiny_cnn" in stdout


def test_a_recipe_names_its_data_so_it_replays_from_any_folder(tmp_path, capsys, monkeypatch):
    import yaml
    from conftest import write_color_dataset
    from edgetl.compiler.spec.config import CompileConfig
    from edgetl.compiler.spec.recipe import recipe_text

    write_color_dataset(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    text = recipe_text(CompileConfig(data="data", out="o", teacher="tiny_cnn", teacher_weights="none"))
    assert yaml.safe_load(text)["data"] == str(tmp_path / "data")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "recipe.yaml").write_text(text)
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, stdout, err = run_cli("compile", "--recipe", "recipe.yaml", "--dry-run", capsys=capsys)
    assert code == 0, err
    assert f"data: {tmp_path / 'data'}" in stdout


def test_bad_recipe_and_bad_target_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "recipe.yaml"
    bad.write_text("teacher: tiny_cnn\nlearning_rat: 3\n")
    code, _, err = run_cli("compile", "--recipe", str(bad), capsys=capsys)
    assert code == 1 and "learning_rat" in err.strip().splitlines()[-1]
    code, _, err = run_cli("compile", ".", "--target", "android-npu", "--dry-run", capsys=capsys)
    assert code == 1 and "android-npu" in err.strip().splitlines()[-1]
