"""Runtime sessions and `edgetl predict`: tiny models, every bad input a user can cause."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgetl.errors import DataError, EdgetlError, ModelFileError
from edgetl.runtime import RuntimeUnavailableError, model_format, open_session
from edgetl.runtime.model_info import ModelInfo

LABELS = ("red", "green", "blue")
SIZE = 32


def build_tiny_artefacts(root: Path) -> dict[str, Path]:
    """A compiled-looking folder (tiny_cnn .tflite/.onnx + model_info.json/labels.txt) and oddities.

    Keys: "folder", "tflite", "onnx", "keras" (the source model), "int8" (full-integer uint8-I/O
    .tflite of the same model), "logits_tflite" (no softmax), "vector_tflite"/"vector_onnx"
    (a model whose input is not an image).
    """
    from edgetl._compat import keras, tf
    from edgetl.compiler.export.convert import export_onnx, export_tflite
    from edgetl.models import create_model

    keras.utils.set_random_seed(0)
    folder = root / "compiled"
    model = create_model("tiny_cnn", weights=None, num_classes=len(LABELS))
    paths = {
        "folder": folder,
        "tflite": export_tflite(model, folder / "model.tflite"),
        "onnx": export_onnx(model, folder / "model.onnx"),
    }
    model.save(folder / "teacher.keras")
    paths["keras"] = folder / "teacher.keras"
    ModelInfo(labels=LABELS, input_size=SIZE, resize_policy="test policy", model="tiny_cnn").write(folder)

    rng = np.random.default_rng(0)
    calib = rng.integers(0, 256, (8, SIZE, SIZE, 3)).astype(np.float32)
    calib[0, 0, 0, 0], calib[0, -1, -1, -1] = 0.0, 255.0  # span 0..255: input scale 1, zero point 0
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([im[None]] for im in calib)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    (root / "int8").mkdir()
    paths["int8"] = root / "int8" / "model_int8.tflite"
    paths["int8"].write_bytes(converter.convert())

    inputs = keras.Input((SIZE, SIZE, 3))
    logits = keras.layers.Dense(len(LABELS))(keras.layers.GlobalAveragePooling2D()(inputs))
    (root / "logits").mkdir()
    paths["logits_tflite"] = export_tflite(keras.Model(inputs, logits), root / "logits" / "model.tflite")

    vec_in = keras.Input((10,), name="features")
    vector = keras.Model(vec_in, keras.layers.Dense(3, activation="softmax")(vec_in))
    (root / "vector").mkdir()
    paths["vector_tflite"] = export_tflite(vector, root / "vector" / "model.tflite")
    import tf2onnx

    paths["vector_onnx"] = root / "vector" / "model.onnx"
    tf2onnx.convert.from_keras(
        vector, input_signature=(tf.TensorSpec((None, 10), tf.float32, name="features"),),
        output_path=str(paths["vector_onnx"]),
    )
    paths["reference"] = model
    return paths


def write_images(folder: Path, n: int = 2, seed: int = 1) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        path = folder / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
        out.append(path)
    return out


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return build_tiny_artefacts(tmp_path_factory.mktemp("runtime"))


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(3).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------------


def test_saved_model_folder_is_the_keras_reference(art, pixels, tmp_path):
    art["reference"].save(tmp_path / "saved", save_format="tf")
    assert model_format(tmp_path / "saved") == "keras"
    session = open_session(tmp_path / "saved")
    np.testing.assert_allclose(session.run(pixels), art["reference"](pixels.astype(np.float32)).numpy(), atol=1e-5)


@pytest.mark.parametrize("kind, runtime", [("tflite", "litert"), ("onnx", "onnxruntime"), ("keras", "keras")])
def test_each_runtime_matches_the_keras_model(art, pixels, kind, runtime):
    reference = art["reference"](pixels.astype(np.float32), training=False).numpy()
    session = open_session(art[kind], threads=1)
    assert session.runtime == runtime
    assert (session.input_size, session.num_classes) == (SIZE, 3)
    probs = session.run(pixels)
    assert probs.dtype == np.float32 and probs.shape == (5, 3)
    np.testing.assert_allclose(probs, reference, atol=1e-5)
    # predict batches any number of images the same way
    np.testing.assert_allclose(session.predict(np.concatenate([pixels] * 3), batch_size=4),
                               np.concatenate([reference] * 3), atol=1e-5)


def test_run_is_prepare_invoke_postprocess(art, pixels):
    session = open_session(art["tflite"])
    tensor = session.prepare(pixels[:1])
    assert tensor.dtype == np.float32 and tensor.flags.c_contiguous
    np.testing.assert_array_equal(session.postprocess(session.invoke(tensor)), session.run(pixels[:1]))
    with pytest.raises(ValueError, match=r"\[N, 32, 32, 3\]"):
        session.run(pixels[:, :16])


def test_info_comes_from_the_compile_files(art):
    info = open_session(art["onnx"]).info()
    assert info.labels == LABELS and info.model == "tiny_cnn" and not info.assumed
    assert info.source.endswith("model_info.json")


def test_int8_model_takes_raw_pixel_bytes(art, pixels):
    session = open_session(art["int8"])
    assert session.input_dtype == "uint8" and session.input_quantization == (1.0, 0)
    tensor = session.prepare(pixels)
    assert tensor.dtype == np.uint8
    np.testing.assert_array_equal(tensor, pixels)  # scale 1, zero point 0: the bytes themselves
    probs = session.run(pixels)
    assert probs.dtype == np.float32
    reference = open_session(art["tflite"]).run(pixels)
    assert np.abs(probs - reference).max() < 0.1  # int8 of a random tiny net: close, not equal
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=0.02)


def test_quantize_pixels_fast_paths_equal_the_formula():
    from edgetl.runtime.litert import quantize_pixels

    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)

    def formula(dtype, scale, zp):
        info = np.iinfo(dtype)
        return np.clip(np.round(x.astype(np.float64) / scale + zp), info.min, info.max).astype(dtype)

    for dtype, scale, zp in [(np.int8, 1.0, -128), (np.uint8, 1.0, 0), (np.int8, 0.5, 3), (np.uint8, 2.0, 10)]:
        got = quantize_pixels(x, np.dtype(dtype), scale, zp)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, formula(dtype, scale, zp))


def test_compiled_model_api_matches_the_interpreter(art, pixels):
    from edgetl.runtime.litert import LiteRTGpuSession

    session = LiteRTGpuSession(art["tflite"], threads=1, accelerator="cpu")  # same API as the GPU path
    assert session.max_batch == 1 and session.describe()["fully_accelerated"] is True
    np.testing.assert_allclose(session.predict(pixels), open_session(art["tflite"]).run(pixels), atol=1e-6)
    session.close()


def test_gpu_runtimes_say_why_they_cannot_run(art, pixels):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA provider present: nothing to report")
    with pytest.raises(RuntimeUnavailableError, match=r"CUDAExecutionProvider not available; install edgetl\[gpu\]"):
        open_session(art["onnx"], runtime="onnxruntime-cuda")
    with pytest.raises(RuntimeUnavailableError, match="TensorrtExecutionProvider not available"):
        open_session(art["onnx"], runtime="onnxruntime-tensorrt")
    try:
        gpu = open_session(art["tflite"], runtime="litert-gpu")
    except RuntimeUnavailableError as exc:  # no GPU accelerator: one line that says so
        assert "GPU" in str(exc) and "\n" not in str(exc)
    else:  # a GPU accelerator is present: then it must run the file as the CPU interpreter does
        cpu = open_session(art["tflite"]).run(pixels)
        assert np.abs(gpu.predict(pixels) - cpu).max() < 0.05  # GPU delegates may compute in fp16
        gpu.close()
    with pytest.raises(ModelFileError, match="runs .onnx files"):
        open_session(art["tflite"], runtime="onnxruntime")


# --------------------------------------------------------------------------------------------
# A model edgetl did not make
# --------------------------------------------------------------------------------------------


def test_foreign_model_runs_with_a_note_of_what_was_assumed(art, tmp_path):
    bare = tmp_path / "downloaded.tflite"
    shutil.copy(art["tflite"], bare)
    info = open_session(bare).info()
    assert info.labels == ("class_0", "class_1", "class_2") and info.source == "assumed"
    assert any("RGB 0..255" in a for a in info.assumed) and any("labels are class indices" in a for a in info.assumed)

    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    info = open_session(bare).info()
    assert info.labels == ("cat", "dog", "bird") and info.source.endswith("labels.txt")
    assert len(info.assumed) == 1  # the input contract is still a guess

    (tmp_path / "labels.txt").write_text("cat\ndog\n")  # wrong count: ignored, and said so
    assert any("has 2 labels" in a for a in open_session(bare).info().assumed)


def test_model_info_for_another_model_is_not_used(art, tmp_path):
    shutil.copy(art["onnx"], tmp_path / "model.onnx")
    ModelInfo(labels=LABELS, input_size=224, resize_policy="p").write(tmp_path)
    info = open_session(tmp_path / "model.onnx").info()
    assert info.source != str(tmp_path / "model_info.json")
    assert any("224 px" in a for a in info.assumed)


def test_a_model_info_with_labels_that_are_not_a_list_is_ignored(art, tmp_path):
    # "labels": "xyz" once read as the three labels x, y and z.
    shutil.copy(art["onnx"], tmp_path / "model.onnx")
    ModelInfo(labels=LABELS, input_size=SIZE, resize_policy="p").write(tmp_path)
    info_file = tmp_path / "model_info.json"
    data = json.loads(info_file.read_text())
    data["labels"] = "".join(label[0] for label in LABELS)
    info_file.write_text(json.dumps(data))
    (tmp_path / "labels.txt").unlink()
    info = open_session(tmp_path / "model.onnx").info()
    assert info.source == "assumed" and any("not a valid model_info.json" in a for a in info.assumed)


def test_labels_inside_the_tflite_file(art, tmp_path):
    inside = tmp_path / "with_metadata.tflite"
    shutil.copy(art["tflite"], inside)
    with zipfile.ZipFile(inside, "a") as zf:  # how TFLite metadata carries its associated files
        zf.writestr("labels.txt", "rouge\nvert\nbleu\n")
    session = open_session(inside)
    assert session.run(np.zeros((1, SIZE, SIZE, 3), np.uint8)).shape == (1, 3)
    info = session.info()
    assert info.labels == ("rouge", "vert", "bleu") and info.source == "inside the model"


def test_labels_inside_the_onnx_file(art, tmp_path):
    import onnx

    model = onnx.load(str(art["onnx"]))
    entry = model.metadata_props.add()
    entry.key, entry.value = "labels", json.dumps(["a", "b", "c"])
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert open_session(tmp_path / "m.onnx").info().labels == ("a", "b", "c")


# --------------------------------------------------------------------------------------------
# Bad files: one clear line each
# --------------------------------------------------------------------------------------------


def _bad_files(art, root: Path) -> dict[str, tuple[Path, str]]:
    root.mkdir(parents=True, exist_ok=True)
    data = art["tflite"].read_bytes()
    (root / "truncated.tflite").write_bytes(data[: len(data) // 2])
    (root / "truncated.onnx").write_bytes(art["onnx"].read_bytes()[:3000])
    (root / "notes.tflite").write_text("this is not a model\n" * 10)
    (root / "photo.onnx").write_bytes(b"\xff\xd8\xff\xe0" + bytes(300))
    (root / "empty.tflite").write_bytes(b"")
    (root / "model.pt").write_bytes(b"abc")
    return {
        "missing": (root / "nope.tflite", "not found"),
        "truncated tflite": (root / "truncated.tflite", "truncated or corrupt TFLite file"),
        "truncated onnx": (root / "truncated.onnx", "not a valid ONNX model"),
        "text as tflite": (root / "notes.tflite", "not a TFLite model"),
        "jpeg as onnx": (root / "photo.onnx", "not a valid ONNX model"),
        "empty": (root / "empty.tflite", "empty"),
        "unknown suffix": (root / "model.pt", "unknown model format"),
        "folder": (root, "is a folder, not a model file"),
        "vector tflite": (art["vector_tflite"], "not an RGB image input"),
        "vector onnx": (art["vector_onnx"], "not an RGB image input"),
    }


def test_bad_model_files_raise_one_line_errors(art, tmp_path):
    for name, (path, message) in _bad_files(art, tmp_path / "bad").items():
        with pytest.raises(ModelFileError) as info:
            open_session(path)
        text = str(info.value)
        assert message in text, (name, text)
        assert "\n" not in text and len(text) < 400, (name, text)


def test_model_format():
    assert model_format("a/b.TFLITE") == "tflite" and model_format("m.onnx") == "onnx"
    assert model_format("m.h5") == "keras" and model_format("m.bin") is None


# --------------------------------------------------------------------------------------------
# edgetl predict
# --------------------------------------------------------------------------------------------


def run_cli(*args, capsys):
    from edgetl import cli
    from edgetl.benchmarks.commands import bench_command, predict_command

    names = {c.name for c in cli.app.registered_commands}
    if "predict" not in names:  # until edgetl/cli.py registers them
        cli.app.command("predict")(predict_command)
    if "bench" not in names:
        cli.app.command("bench")(bench_command)
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err
    return errors[0]


@pytest.mark.parametrize("kind", ["tflite", "onnx", "int8"])
def test_predict_prints_top_k_labels(art, tmp_path, capsys, kind):
    images = write_images(tmp_path / "photos", n=2)
    if kind == "int8":  # labels for the int8 file come from a labels.txt beside it
        (art["int8"].parent / "labels.txt").write_text("\n".join(LABELS) + "\n")
    code, out, err = run_cli("predict", art[kind], *images, "--top-k", "2", capsys=capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 2
    session = open_session(art[kind])
    from edgetl.runtime.images import load_image

    for line, image in zip(lines, images):
        probs = session.run(load_image(image, SIZE)[None])[0]
        best, second = np.argsort(-probs)[:2]
        assert line.startswith(f"{image}: {LABELS[best]} {probs[best]:.4f}, {LABELS[second]} ")
    if kind == "int8":
        assert "note:" in err and "assumed" in err  # only labels.txt: the input contract is a guess
    else:
        assert "note:" not in err


def test_predict_json_and_the_note_for_a_foreign_model(art, tmp_path, capsys):
    bare = tmp_path / "model.onnx"
    shutil.copy(art["onnx"], bare)
    images = write_images(tmp_path / "p", n=1)
    code, out, err = run_cli("predict", bare, *images, "--json", "-k", "5", capsys=capsys)
    assert code == 0
    doc = json.loads(out)
    top = doc["predictions"][0]["top"]
    assert len(top) == 3  # k is capped at the number of classes
    assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
    assert {t["label"] for t in top} == {"class_0", "class_1", "class_2"}
    assert doc["labels_from"] == "assumed" and doc["assumed"]
    assert "note: model.onnx did not come with edgetl's model_info.json; assumed:" in err


def test_predict_applies_softmax_to_logits_and_says_so(art, tmp_path, capsys):
    images = write_images(tmp_path / "p", n=1)
    code, out, err = run_cli("predict", art["logits_tflite"], *images, "--json", capsys=capsys)
    assert code == 0
    top = json.loads(out)["predictions"][0]["top"]
    assert abs(sum(t["probability"] for t in top) - 1.0) < 1e-4
    assert "softmax applied" in err


def test_predict_bad_inputs_are_one_line_and_exit_1(art, tmp_path, capsys):
    good = write_images(tmp_path / "p", n=1)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cases = {name: ([path, *good], message) for name, (path, message) in _bad_files(art, tmp_path / "bad").items()}
    cases["undecodable image"] = ([art["tflite"], good[0], broken], "broken.jpg")
    cases["missing image"] = ([art["tflite"], tmp_path / "nope.jpg"], "nope.jpg")
    cases["unknown runtime"] = ([art["tflite"], good[0], "--runtime", "tensorflow"], "not a runtime")
    for name, (args, message) in cases.items():
        code, out, err = run_cli("predict", *args, capsys=capsys)
        assert code == 1, (name, err)
        assert message in _one_error_line(err), (name, err)
    # the readable image is still classified when another one is not
    code, out, err = run_cli("predict", art["tflite"], good[0], broken, capsys=capsys)
    assert code == 1 and out.startswith(f"{good[0]}: ") and "cannot read 1 of 2 images" in err


def test_predict_classifies_every_image_in_a_folder(art, tmp_path, capsys, monkeypatch):
    """A folder stands for the image files under it, sub-folders too, in name order; other files
    and hidden ones are left out; a folder with no images is a one-line error. Chunked decoding
    gives the same answers as one batch."""
    photos = tmp_path / "device_photos"
    images = write_images(photos / "day", n=2) + write_images(photos / "night", n=1)
    (photos / "notes.txt").write_text("not an image")
    (photos / ".hidden").mkdir()
    shutil.copy(images[0], photos / ".hidden" / "thumb.jpg")
    code, out, err = run_cli("predict", art["tflite"], photos, "--json", capsys=capsys)
    assert code == 0, err
    listed = [p["image"] for p in json.loads(out)["predictions"]]
    assert listed == [str(p) for p in sorted(images)]
    one_batch = {p["image"]: p["top"] for p in json.loads(out)["predictions"]}
    from edgetl.runtime import classify

    monkeypatch.setattr(classify, "CHUNK_IMAGES", 2)  # two chunks: 2 images, then 1
    code, out, err = run_cli("predict", art["tflite"], photos, "--json", capsys=capsys)
    assert code == 0 and {p["image"]: p["top"] for p in json.loads(out)["predictions"]} == one_batch
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "day").symlink_to(photos / "day", target_is_directory=True)
    (linked / "loop").symlink_to(linked, target_is_directory=True)  # cut, not followed forever
    code, out, err = run_cli("predict", art["tflite"], linked, "--json", capsys=capsys)
    assert code == 0 and [p["image"] for p in json.loads(out)["predictions"]] == [str(linked / "day" / p.name) for p in sorted(images[:2])]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    code, out, err = run_cli("predict", art["tflite"], images[0], empty, capsys=capsys)
    assert code == 1 and out == "" and "folder with no image files" in _one_error_line(err)
    # A sub-folder that cannot be listed is said (its images are missing), not silently left out.
    from edgetl.runtime import images as images_module

    listing = images_module.list_folder

    def refuse_night(folder):
        if Path(folder).name == "night":
            raise PermissionError(13, "Permission denied", str(folder))
        return listing(folder)

    monkeypatch.setattr(images_module, "list_folder", refuse_night)
    code, out, err = run_cli("predict", art["tflite"], photos, capsys=capsys)
    line = _one_error_line(err)
    assert code == 1 and out.count("\n") == 2 and line.startswith("error: cannot list 1 folder: ")
    assert f"{photos / 'night'}: the folder cannot be read (Permission denied)" in line
    code, out, err = run_cli("predict", art["tflite"], photos / "night", capsys=capsys)
    assert code == 1 and out == "" and "holds no image file that can be read" in _one_error_line(err)


def test_predict_error_is_one_line_for_a_real_process(art, tmp_path):
    """No native log line (LiteRT writes to fd 2 directly) may join the one error line."""
    truncated = tmp_path / "t.tflite"
    truncated.write_bytes(art["tflite"].read_bytes()[:5000])
    image = write_images(tmp_path / "p", n=1)[0]
    code = (
        "import sys\n"
        "from edgetl import cli\n"
        "from edgetl.benchmarks.commands import predict_command\n"
        "if 'predict' not in {c.name for c in cli.app.registered_commands}:\n"
        "    cli.app.command('predict')(predict_command)\n"
        "cli.main(sys.argv[1:])\n"
    )
    for model, extra, expect in ((truncated, [], "truncated"), (art["tflite"], [], None),
                                 (art["tflite"], ["--runtime", "litert-gpu"], "GPU")):
        result = subprocess.run([sys.executable, "-c", code, "predict", str(model), str(image), *extra],
                                capture_output=True, text=True, timeout=120)
        if expect == "GPU" and result.returncode == 0:
            continue  # a machine with a GPU: nothing to report
        assert result.returncode == (1 if expect else 0), result.stderr
        if expect:
            assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
            assert result.stderr.startswith("error: ") and expect in result.stderr
        else:
            assert result.stderr.strip() == "" and result.stdout.startswith(str(image))


def test_runtime_modules_do_not_import_tensorflow():
    code = (
        "import sys\n"
        "import edgetl.runtime, edgetl.runtime.litert, edgetl.runtime.onnx_runtime, edgetl.runtime.classify\n"
        "import edgetl.benchmarks.commands, edgetl.benchmarks.harness, edgetl.benchmarks._worker\n"
        "import edgetl.runtime.measure, edgetl.benchmarks.environment, edgetl.benchmarks.table\n"
        "import edgetl.benchmarks.overhead\n"
        "assert 'tensorflow' not in sys.modules and 'onnxruntime' not in sys.modules, 'heavy import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_errors_are_edgetl_errors():
    assert issubclass(RuntimeUnavailableError, EdgetlError) and issubclass(DataError, EdgetlError)
