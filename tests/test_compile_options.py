"""What compile's options and the files it writes promise a user (issue 20), on a tiny model.

One compile through the CLI, `--target android-cpu --io-dtype int8` on generated colour images,
serves most tests: int8 I/O packaging, labels in variants/, `bench DIR` over variants/, the
resolved recipe, the calibration count, the target's wording, and `--dry-run` after it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from edgetl.cli import main

TINY = ["--teacher", "tiny_cnn", "--teacher-weights", "none", "--student", "none", "--finetune-epochs", "1", "--selection", "holdout"]


def run_cli(*args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def int8_build(tmp_path_factory):
    """`edgetl compile DATA --target android-cpu --io-dtype int8` with the tiny teacher, through the
    API because the tiny model needs a higher head learning rate than the CLI offers to learn the
    colours in seconds (a model that tells them apart makes the agreement checks meaningful)."""
    from conftest import write_color_dataset
    from edgetl.compiler.spec.config import CompileConfig
    from edgetl.compiler.pipeline import compile_model

    root = tmp_path_factory.mktemp("int8io")
    data = write_color_dataset(root / "data", per_class=16)
    out = root / "out"
    config = CompileConfig(
        data=data, out=out, teacher="tiny_cnn", teacher_weights="none", student="none", selection="holdout",
        finetune_epochs=1, target="android-cpu", io_dtype="int8",
    )
    report = compile_model(config)
    return data, out, report


def _predict_json(capsys, model, images) -> list[dict]:
    code, out, err = run_cli("predict", model, *images, "--json", "--top-k", "3", capsys=capsys)
    assert code == 0, err
    return json.loads(out)["predictions"]


def test_io_dtype_int8_compiles_and_predict_agrees_with_float_on_golden_images(int8_build, capsys):
    """Bug 1: `--io-dtype int8` used to fail at packaging ("input_kind 'INT8'")."""
    from ai_edge_litert.interpreter import Interpreter

    from edgetl.compiler.export.metadata import read_tflite_metadata

    _, out, report = int8_build
    interp = Interpreter(model_path=str(out / "model.tflite"))
    assert interp.get_input_details()[0]["dtype"] == np.int8 and interp.get_output_details()[0]["dtype"] == np.int8
    meta = read_tflite_metadata(out / "model.tflite")
    assert meta["input_kind"] == "int8" and meta["labels"] == ["blue", "green", "red"]
    golden = sorted((out / "app" / "golden").glob("*.png"))
    assert golden
    deployed = _predict_json(capsys, out / "model.tflite", golden)
    float_file = _predict_json(capsys, out / "variants" / "model.fp32.tflite", golden)
    top1 = [p["top"][0]["label"] for p in deployed]
    assert top1 == [p["top"][0]["label"] for p in float_file]
    # ... and with the model's own golden vectors, and with the truth (the tiny model learnt the colours).
    expected = json.loads((out / "app" / "golden" / "expected.json").read_text())["vectors"]
    assert top1 == [v["expected_top1"] for v in expected] == [v["true_label"] for v in expected]


def test_variants_carry_labels_and_bench_dir_includes_them(int8_build, capsys):
    """Bug 7: variants/ files printed class_0...; `bench DIR` skipped variants/."""
    from edgetl.benchmarks.harness import discover_models

    data, out, _ = int8_build
    variants = sorted((out / "variants").glob("model.*"))
    assert {p.name for p in variants} >= {"model.fp32.tflite", "model.fp32.onnx", "model.int8.tflite"}
    image = next((data / "red").glob("*.png"))
    for variant in variants:
        (prediction,) = _predict_json(capsys, variant, [image])
        assert {t["label"] for t in prediction["top"]} <= {"red", "green", "blue"}, variant.name
    found = {p.relative_to(out).as_posix() for p in discover_models((out,))}
    # Every variant, less those with the same bytes as a deployed file (benchmarked once).
    deployed = {(out / name).read_bytes() for name in ("model.tflite", "model.onnx")}
    distinct = {p.relative_to(out).as_posix() for p in variants if p.read_bytes() not in deployed}
    assert found == {"model.tflite", "model.onnx"} | distinct and len(distinct) >= 2
    code, _, err = run_cli("bench", out, "--threads", "1", "--runs", "2", "--warmup", "0", "--no-chart",
                           "--runtime", "litert", "--out", out.parent / "bench", capsys=capsys)
    assert code == 0, err
    results = json.loads((out.parent / "bench" / "bench.json").read_text())["results"]
    files = [r["file"] for r in results]
    assert "model.fp32.tflite" in files, files  # variants/ is benched
    # The int8 variant is the deployed model.tflite byte for byte: one row, and the bench says so.
    assert (out / "variants" / "model.int8.tflite").read_bytes() == (out / "model.tflite").read_bytes()
    assert "variants/model.int8.tflite: the same file as model.tflite, benchmarked once" in err
    assert "model.int8.tflite" not in files, files


def test_recipe_is_fully_resolved_and_report_counts_calibration(int8_build):
    """Bug 6 (recipe) and point 8 (calibration_images, the target's wording)."""
    from edgetl.runtime.measure import usable_cores

    data, out, report = int8_build
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["threads"] == min(4, len(usable_cores())) and recipe["quantize"] == "int8"
    assert recipe["io_dtype"] == "int8"
    trained_on = report["dataset"]["totals"]["train"]
    assert report["optimization"]["calibration_images"] == trained_on < report["optimization"]["calibration_size"] == 128
    why = report["deployed"]["why"]
    assert why.startswith("For android-cpu: model.tflite (the file its runtime takes: LiteRT") and "takes TFLITE" not in why


def test_dry_run_after_a_compile_reuses_the_export_and_refuses_the_folder(int8_build, capsys, tmp_path):
    """Bug 6: --dry-run said "export would run" for a cached export, and passed for a run that fails."""
    data, out, _ = int8_build
    args = ["compile", "--recipe", out / "recipe.yaml", "--dry-run"]  # the same settings
    code, stdout, err = run_cli(*args, "--out", tmp_path / "again", capsys=capsys)
    assert code == 0, err
    stages = dict(line.split(None, 1) for line in stdout.split("stages:\n")[1].splitlines() if line.startswith("  "))
    assert stages["teacher"].startswith("cached, reused") and stages["export"].startswith("cached, reused")
    assert stages["optimize"].startswith("would run")
    code, _, err = run_cli(*args, "--out", out, capsys=capsys)  # the real run would refuse it
    assert code == 1 and "already holds files" in err.strip().splitlines()[-1]
    assert not (tmp_path / "again").exists()


def test_student_size_null_and_its_value_key_the_same_stage(tmp_path):
    """Bug 6: the cache saw `student_size: null` and 224 as different students."""
    from conftest import write_color_dataset
    from edgetl.compiler.spec.config import CompileConfig
    from edgetl.compiler.data.datasets import scan_dataset
    from edgetl.compiler.stages import stage_keys as _stage_keys
    from edgetl.compiler.spec.recipe import recipe_text

    data = write_color_dataset(tmp_path / "data")
    dataset = scan_dataset(data, val_fraction=0.15, test_fraction=0.15, seed=0)
    base = dict(data=data, out=tmp_path / "o", teacher="tiny_cnn", student="efficientnet_lite0")
    keys = [_stage_keys(CompileConfig(**base, **extra).resolved(), dataset, []) for extra in (
        {}, {"student_size": 224}, {"target": "android-cpu"}, {"target": "android-cpu", "student_size": 224},
    )]
    assert all(k["student_head"] == keys[0]["student_head"] and k["student"] == keys[0]["student"] for k in keys)
    assert _stage_keys(CompileConfig(**base, student_size=160).resolved(), dataset, [])["student_head"] != keys[0]["student_head"]
    recipe = yaml.safe_load(recipe_text(CompileConfig(**base).resolved()))
    assert recipe["student_size"] == 224 and isinstance(recipe["threads"], int)
    decided_at_run_time = ("student_size", "threads", "quantize", "io_dtype")
    assert [name for name in decided_at_run_time if recipe[name] is None] == []


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--teacher", "efficientnet_lite0", "--teacher-weights", "no/such.h5"], "--teacher-weights 'no/such.h5' must be 'imagenet', 'none' or an existing weights file"),
        (["--teacher", "tiny_cnn"], "test models have no pretrained weights"),
    ],
)
def test_dry_run_fails_when_the_weights_cannot_be_had(extra, message, tmp_path, capsys):
    from conftest import write_color_dataset

    data = write_color_dataset(tmp_path / "data")
    code, _, err = run_cli("compile", data, *extra, "--student", "none", "--no-cache", "--dry-run", capsys=capsys)
    assert code == 1 and message in err.strip().splitlines()[-1] and "Traceback" not in err


def test_dry_run_names_a_download_it_needs(tmp_path, capsys, monkeypatch):
    from conftest import write_color_dataset

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras-home"))  # resnet50's weights are not there
    data = write_color_dataset(tmp_path / "data")
    code, stdout, err = run_cli("compile", data, "--no-cache", "--dry-run", capsys=capsys)
    assert code == 0, err
    assert "needs network: teacher resnet50" in stdout and "--teacher-weights FILE" in stdout


def test_debug_works_after_the_subcommand_too(capsys):
    """Bug 2: `edgetl compile nosuchdir/ --debug` said "No such option: --debug"."""
    for args in (["compile", "nosuchdir/", "--debug"], ["--debug", "compile", "nosuchdir/"]):
        code, _, err = run_cli(*args, capsys=capsys)
        assert code == 1 and "Traceback" in err and "nosuchdir" in err.strip().splitlines()[-1]
    code, _, err = run_cli("compile", "nosuchdir/", capsys=capsys)
    assert code == 1 and "Traceback" not in err


def test_help_shows_no_type_after_plain_flags(capsys):
    code, out, _ = run_cli("compile", "--help", capsys=capsys)
    assert code == 0 and "--dry-run" in out and "<bool>" not in out
    assert "<int>" in out  # options that take a value still show its type


def test_targets_and_models_explain_what_they_list(capsys):
    code, out, _ = run_cli("targets", capsys=capsys)
    assert code == 0 and "Every compile writes both model.tflite and model.onnx" in " ".join(out.split())
    code, out, _ = run_cli("models", capsys=capsys)
    assert code == 0 and "with the 1000-class ImageNet head" in " ".join(out.split())


def test_wording_of_points():
    from edgetl.compiler.compression.optimize import points

    assert (points(1.0), points(1), points(0.5), points(2)) == ("1 point", "1 point", "0.5 points", "2 points")


def test_quiet_compile_prints_nothing_and_still_returns_the_plan(tmp_path, capsys):
    """compile_model(quiet=True), for programs that read the returned report instead."""
    from conftest import write_color_dataset
    from edgetl.compiler.pipeline import compile_model
    from edgetl.compiler.progress import console
    from edgetl.compiler.spec.config import CompileConfig

    data = write_color_dataset(tmp_path / "data")
    config = CompileConfig(data=data, out=tmp_path / "out", teacher="tiny_cnn", teacher_weights="none", student="none", use_cache=False)
    loud = compile_model(config, dry_run=True)
    printed = capsys.readouterr()
    assert "would run" in printed.out + printed.err
    quiet = compile_model(config, dry_run=True, quiet=True)
    printed = capsys.readouterr()
    assert (printed.out, printed.err) == ("", "") and quiet == loud and not console.quiet
