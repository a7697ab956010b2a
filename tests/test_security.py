"""Opening a file never runs code from it: one hostile file per path by which edgetl opens a
user's file (the README's "Security" section lists the same paths).

Each hostile Keras model writes a marker file when its code runs; the marker is made while the
model is built (tf_keras calls a Lambda then), removed, and must never appear again unless the
user passes --trust-model. Everything is made here, offline.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import write_color_dataset
from edgetl.errors import EdgetlError, MetadataError, UnsafeModelError, WeightsUnavailableError

LABELS = ("red", "green", "blue")
SIZE = 32


def run_cli(*args, capsys):
    from edgetl import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def last_error_line(err: str) -> str:
    """compile prints its progress first; the error is still one line, the last one."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert [ln for ln in lines if ln.startswith("error:")] == lines[-1:] and "Traceback" not in err, err
    return lines[-1]


def _writes_marker(marker: Path):
    # The function a hostile Lambda wraps: self-contained (the path is a literal in its
    # bytecode), so it runs wherever the file is loaded.
    return eval(f"lambda t: (__import__('pathlib').Path({str(marker)!r}).write_text('code ran'), t)[1]")


def _hostile_tiny_cnn(marker: Path):
    """tiny_cnn with a marker-writing Lambda in front: same weights by layer order as tiny_cnn."""
    from edgetl._compat import keras
    from edgetl.models import create_model

    keras.utils.set_random_seed(0)
    clean = create_model("tiny_cnn", weights=None, num_classes=len(LABELS))
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Lambda(_writes_marker(marker), name="payload")(inputs)
    tensors = {clean.layers[0].name: x}
    for layer in clean.layers[1:]:  # the same graph (its pooled block's branch too), on the payload
        inbound = layer._inbound_nodes[0].inbound_layers
        args = [tensors[source.name] for source in (inbound if isinstance(inbound, list) else [inbound])]
        tensors[layer.name] = layer(args if len(args) > 1 else args[0])
    return keras.Model(inputs, tensors[clean.layers[-1].name]), clean


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from edgetl._compat import keras, tf
    from edgetl.compiler.export.convert import export_tflite

    root = tmp_path_factory.mktemp("security")
    marker = root / "marker.txt"
    hostile, clean = _hostile_tiny_cnn(marker)
    paths = {"marker": marker, "root": root}
    (root / "h5").mkdir()
    paths["h5"] = root / "h5" / "evil.h5"
    hostile.save(paths["h5"])  # what the reporter did: model.save("evil.h5")
    paths["saved_model"] = root / "evil_saved_model"
    hostile.save(paths["saved_model"], save_format="tf")
    paths["keras"] = root / "evil.keras"
    hostile.save(paths["keras"])
    paths["clean_h5"] = root / "clean.h5"
    clean.save(paths["clean_h5"])
    paths["clean_weights"] = root / "clean.weights.h5"
    clean.save_weights(paths["clean_weights"])

    class WriteFileLayer(keras.layers.Layer):  # a custom object: its call is a graph op that writes
        def call(self, x):
            tf.io.write_file(str(marker), tf.strings.as_string(tf.reduce_sum(x)))
            return tf.identity(x)

    inputs = keras.Input((SIZE, SIZE, 3))
    x = WriteFileLayer(name="writer")(inputs)
    x = keras.layers.Dense(len(LABELS), activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    paths["graph_op"] = root / "writefile_saved_model"
    keras.Model(inputs, x).save(paths["graph_op"], save_format="tf")

    (root / "tflite").mkdir()
    paths["tflite"] = export_tflite(clean, root / "tflite" / "model.tflite")
    marker.unlink(missing_ok=True)  # building and saving called the Lambda
    return paths


@pytest.fixture(autouse=True)
def no_marker_yet(request):
    if "files" in request.fixturenames:
        request.getfixturevalue("files")["marker"].unlink(missing_ok=True)


@pytest.fixture
def photo(tmp_path):
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


# --------------------------------------------------------------------------------------------
# Keras models: .h5, SavedModel, .keras
# --------------------------------------------------------------------------------------------


def test_hostile_h5_is_refused_by_predict_in_one_line_of_a_real_process(files, photo):
    result = subprocess.run(
        [sys.executable, "-c", "from edgetl.cli import main; main()", "predict", str(files["h5"]), str(photo)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1, result.stderr
    line = one_error_line(result.stderr)
    assert "Lambda" in line and "--trust-model" in line and str(files["h5"]) in line
    assert result.stdout == ""
    assert not files["marker"].exists()


def test_hostile_h5_loads_with_trust_model(files, photo, capsys):
    code, out, err = run_cli("predict", files["h5"], photo, "--trust-model", capsys=capsys)
    assert code == 0, err
    assert out.startswith(f"{photo}: ")
    assert files["marker"].exists()  # the file really was hostile, and trusting it ran its code


@pytest.mark.parametrize("kind", ["saved_model", "keras"])
def test_hostile_saved_model_and_keras_file_are_refused_then_load_when_trusted(files, photo, capsys, kind):
    code, out, err = run_cli("predict", files[kind], photo, capsys=capsys)
    assert code == 1
    assert "Lambda" in one_error_line(err) and "--trust-model" in err
    assert not files["marker"].exists()
    code, out, err = run_cli("predict", files[kind], photo, "--trust-model", capsys=capsys)
    assert code == 0, err
    assert files["marker"].exists()


def test_a_graph_op_that_writes_files_is_refused(files, photo, capsys):
    from edgetl.runtime.model_safety import code_in_model_file

    assert any("WriteFile" in finding for finding in code_in_model_file(files["graph_op"]))
    code, _, err = run_cli("predict", files["graph_op"], photo, capsys=capsys)
    assert code == 1 and "refusing to load" in one_error_line(err)
    assert not files["marker"].exists()


def test_bench_refuses_the_hostile_h5_and_runs_it_when_trusted(files, tmp_path, capsys):
    code, _, err = run_cli("bench", files["h5"], "--runtime", "keras", "--out", tmp_path / "b", capsys=capsys)
    assert code == 1 and "--trust-model" in one_error_line(err)
    assert not files["marker"].exists() and not (tmp_path / "b").exists()
    code, out, err = run_cli(
        "bench", files["h5"], "--runtime", "keras", "--trust-model", "--threads", "1", "--runs", "2",
        "--warmup", "0", "--no-chart", "--out", tmp_path / "b", capsys=capsys,
    )
    assert code == 0, err
    assert (tmp_path / "b" / "bench.json").is_file() and files["marker"].exists()


def test_compile_refuses_the_hostile_h5_as_teacher_or_student_weights(files, tmp_path, capsys):
    data = write_color_dataset(tmp_path / "data", classes=LABELS)
    for option, extra in (("--teacher-weights", ["--student", "none"]),
                          ("--student-weights", ["--teacher-weights", "none", "--student", "tiny_cnn"])):
        code, _, err = run_cli(
            "compile", data, "--teacher", "tiny_cnn", option, files["h5"], *extra,
            "--out", tmp_path / "out", "--no-cache", capsys=capsys,
        )
        assert code == 1, err
        assert "--trust-model" in one_error_line(err)
        assert not (tmp_path / "out").exists() and not files["marker"].exists()


def test_compile_takes_the_weights_of_a_trusted_h5(files, tmp_path, capsys):
    data = write_color_dataset(tmp_path / "data", classes=LABELS)
    code, _, err = run_cli(
        "compile", data, "--teacher", "tiny_cnn", "--teacher-weights", files["h5"], "--trust-model",
        "--student", "none", "--quantize", "fp32", "--finetune-epochs", "1",
        "--out", tmp_path / "out", "--no-cache", capsys=capsys,
    )
    assert code == 0, err
    assert (tmp_path / "out" / "model.tflite").is_file()
    # Loading weights reads tensors by layer order and never rebuilds the Lambda.
    assert not files["marker"].exists()


def test_a_recipe_cannot_grant_trust(files, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"data: {tmp_path}\nteacher: tiny_cnn\nteacher_weights: {files['h5']}\ntrust_model: true\n")
    code, _, err = run_cli("compile", "--recipe", recipe, "--dry-run", capsys=capsys)
    assert code == 1 and "unknown settings trust_model" in one_error_line(err)


def test_clean_keras_files_and_weights_only_files_pass(files):
    from edgetl.runtime.model_safety import code_in_model_file

    for kind in ("clean_h5", "clean_weights"):
        assert code_in_model_file(files[kind]) == [], kind


def test_edgetl_own_keras_files_pass(tmp_path):
    from edgetl.models import create_model
    from edgetl.runtime.model_safety import code_in_model_file

    model = create_model("tiny_cnn", weights=None, num_classes=3)
    for name in ("m.keras", "m.h5", "m_saved_model"):
        model.save(tmp_path / name)
        assert code_in_model_file(tmp_path / name) == [], name


def test_a_module_import_in_a_config_is_refused(tmp_path):
    from edgetl.runtime.model_safety import code_in_model_file

    config = ('{"class_name": "Functional", "config": {"layers": [{"class_name": "Dense", "config": '
              '{"activation": {"module": "os", "class_name": "function", "config": "system", '
              '"registered_name": "system"}}}]}}')
    with zipfile.ZipFile(tmp_path / "m.keras", "w") as zf:
        zf.writestr("config.json", config)
        zf.writestr("metadata.json", "{}")
    assert code_in_model_file(tmp_path / "m.keras") == ["an import of module 'os' in config.json"]
    exec_config = config.replace('"os"', '"builtins"').replace("system", "exec")
    with zipfile.ZipFile(tmp_path / "b.keras", "w") as zf:
        zf.writestr("config.json", exec_config)
    assert code_in_model_file(tmp_path / "b.keras") == ["a reference to Python's builtin 'exec' in config.json"]


# --------------------------------------------------------------------------------------------
# PyTorch .pth weights: the allow-listed unpickler
# --------------------------------------------------------------------------------------------


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _legacy_pth(payload) -> bytes:
    # What torch.save(..., _use_new_zipfile_serialization=False) writes before the tensors.
    out = io.BytesIO()
    for obj in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}, payload):
        pickle.dump(obj, out, protocol=2)
    return out.getvalue()


def test_a_hostile_pth_is_refused_before_any_code_runs(tmp_path, capsys):
    from edgetl.models._torch_legacy import load_state_dict

    marker = tmp_path / "pth_marker"
    whole = tmp_path / "whole.pth"  # the very first pickle is the payload
    whole.write_bytes(pickle.dumps(_RunsCode(marker), protocol=2))
    inside = tmp_path / "inside.pth"  # a well-formed header, the state dict is the payload
    inside.write_bytes(_legacy_pth({"conv.weight": _RunsCode(marker)}))
    zipped = tmp_path / "zipped.pth"  # torch >= 1.6's zip format: data.pkl could carry anything
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(_RunsCode(marker)))
    for path in (whole, inside):
        with pytest.raises(WeightsUnavailableError, match="refusing to load: the file references posix.system"):
            load_state_dict(path)
    with pytest.raises(WeightsUnavailableError, match="zip-format"):
        load_state_dict(zipped)
    assert not marker.exists()

    data = write_color_dataset(tmp_path / "data", classes=LABELS)
    code, _, err = run_cli(
        "compile", data, "--teacher", "efficientnet_lite0", "--teacher-weights", inside, "--student", "none",
        "--out", tmp_path / "out", "--no-cache", capsys=capsys,
    )
    assert code == 1 and "posix.system" in last_error_line(err)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# .tflite: the zip of associated files, flatbuffer verification, Select-TF ops
# --------------------------------------------------------------------------------------------


def test_zip_entries_in_a_tflite_are_never_written_anywhere(files, tmp_path, monkeypatch, capsys, photo):
    from edgetl.compiler.export import metadata as md
    from edgetl.runtime.litert import embedded_tflite_info

    model = tmp_path / "a" / "b" / "model.tflite"
    model.parent.mkdir(parents=True)
    model.write_bytes(md.add_tflite_metadata(
        files["tflite"].read_bytes(), name="m", description="d", version="1", author="a", license="l", labels=LABELS,
    ))
    with zipfile.ZipFile(model, "a") as zf:
        for name in ("../../evil.txt", "/tmp/edgetl-evil-absolute.txt", "..\\..\\evil2.txt"):
            zf.writestr(name, "written outside")
    before = sorted(p for p in tmp_path.rglob("*"))
    monkeypatch.chdir(model.parent)
    code, out, err = run_cli("predict", model, photo, capsys=capsys)
    assert code == 0, err
    assert out.startswith(f"{photo}: ") and out.split(": ")[1].split()[0] in LABELS
    read = md.read_tflite_metadata(model)
    assert "../../evil.txt" in read["files"] and read["labels"] == list(LABELS)
    assert embedded_tflite_info(model)["labels"] == list(LABELS)
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written, inside or out
    assert not Path("/tmp/edgetl-evil-absolute.txt").exists()


def test_an_associated_file_that_would_inflate_past_the_limit_is_not_read(files, tmp_path, monkeypatch):
    from edgetl.compiler.export import metadata as md
    from edgetl.runtime import litert

    monkeypatch.setattr(litert, "MAX_ASSOCIATED_FILE_BYTES", 1 << 20)
    bomb = tmp_path / "bomb.tflite"
    bomb.write_bytes(md.add_tflite_metadata(
        files["tflite"].read_bytes(), name="m", description="d", version="1", author="a", license="l", labels=LABELS,
    ))
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model_info.json", b" " * (4 << 20))  # 4 MiB of spaces, a few kB on disk
    assert bomb.stat().st_size < files["tflite"].stat().st_size + (64 << 10)
    assert litert.embedded_tflite_info(bomb)["labels"] == list(LABELS)  # the bomb is skipped
    with pytest.raises(MetadataError, match="would inflate to 4194304 bytes"):
        md.read_tflite_metadata(bomb)


def test_a_tflite_with_a_file_writing_select_tf_op_does_not_run(files, tmp_path, photo, capsys):
    from edgetl._compat import tf

    marker = tmp_path / "flex_marker"

    @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32)])
    def writes(x):
        tf.io.write_file(str(marker), tf.strings.as_string(tf.reduce_sum(x)))
        return tf.nn.softmax(tf.reduce_mean(x, [1, 2]))

    converter = tf.lite.TFLiteConverter.from_concrete_functions([writes.get_concrete_function()], writes)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    flex = tmp_path / "flex.tflite"
    flex.write_bytes(converter.convert())
    assert b"WriteFile" in flex.read_bytes()
    code, _, err = run_cli("predict", flex, photo, capsys=capsys)
    assert code == 1 and "Select TensorFlow op" in one_error_line(err)
    assert not marker.exists()


def test_a_corrupt_tflite_fails_flatbuffer_verification(files, tmp_path, photo, capsys):
    data = bytearray(files["tflite"].read_bytes())
    data[8:len(data) // 2] = bytes(np.random.default_rng(0).integers(0, 256, len(data) // 2 - 8, dtype=np.uint8))
    bad = tmp_path / "scrambled.tflite"
    bad.write_bytes(bytes(data))
    code, _, err = run_cli("predict", bad, photo, capsys=capsys)
    assert code == 1 and "flatbuffer" in one_error_line(err)


# --------------------------------------------------------------------------------------------
# .onnx, recipes, images
# --------------------------------------------------------------------------------------------


def test_an_onnx_custom_op_is_not_loaded_from_anywhere(tmp_path, photo, capsys):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("WriteFile", ["image"], ["probabilities"], domain="com.evil")
    graph = helper.make_graph(
        [node], "evil",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.evil", 1)])
    path = tmp_path / "evil.onnx"
    onnx.save(model, path)
    code, _, err = run_cli("predict", path, photo, capsys=capsys)
    assert code == 1 and "not a loadable ONNX model" in one_error_line(err)
    source = (Path(__file__).parents[1] / "runtime" / "onnx_runtime.py").read_text()
    assert "register_custom_ops_library" not in source


def test_a_recipe_is_read_with_yaml_safe_load(tmp_path, capsys):
    marker = tmp_path / "yaml_marker"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"data: !!python/object/apply:os.system [\"touch {marker}\"]\n")
    code, _, err = run_cli("compile", "--recipe", recipe, "--dry-run", capsys=capsys)
    assert code == 1 and "not valid YAML" in one_error_line(err)
    assert not marker.exists()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB pixels and holds almost none: a decompression bomb's
    header, which is all a decoder needs to see to refuse it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("pillow_limit", ["default", "switched off"])
def test_a_decompression_bomb_image_is_refused(files, tmp_path, photo, capsys, monkeypatch, pillow_limit):
    from PIL import Image

    from edgetl.runtime.images import MAX_IMAGE_PIXELS

    if pillow_limit == "switched off":  # another library may do this; edgetl keeps its own limit
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(20_000, 20_000))
    assert 20_000 * 20_000 > MAX_IMAGE_PIXELS
    code, out, err = run_cli("predict", files["tflite"], photo, bomb, capsys=capsys)
    assert code == 1 and out.startswith(f"{photo}: ")
    assert "bomb.png" in last_error_line(err) and "image too large to decode safely" in err


def test_unsafe_model_error_is_a_one_line_edgetl_error():
    assert issubclass(UnsafeModelError, EdgetlError)
