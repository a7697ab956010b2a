"""TFLite metadata and ONNX metadata_props (compiler/export/metadata.py), checked against real clients:
LiteRT (outputs unchanged), edgetl.runtime, MediaPipe Tasks' ImageClassifier (category names) and
ONNX Runtime.

One tiny model is trained for a few seconds on solid-colour images so that it tells red, green
and blue apart confidently; a float32 file and a full-integer uint8-I/O file are made from it.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import edgetl  # noqa: F401  (before TensorFlow or mediapipe: selects tf_keras)
import numpy as np
import pytest

from edgetl.compiler.export import metadata as md
from edgetl.errors import MetadataError, ModelFileError

LABELS = ["red", "green", "blue"]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
SIZE = 32  # tiny_cnn's input size
FIELDS = dict(name="tiny colours", description="Tells red, green and blue apart.", version="1.2.3",
              author="edgetl tests", license="Apache-2.0")


def colour_images(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x, y = [], []
    for label, name in enumerate(LABELS):
        noise = rng.normal(0, 20, (per_class, SIZE, SIZE, 3))
        x.append(np.clip(np.array(COLOURS[name]) + noise, 0, 255).astype(np.uint8))
        y += [label] * per_class
    return np.concatenate(x), np.array(y)


def mediapipe_module(name: str):
    """A mediapipe module (a test-only dependency: the real client), or skip the test."""
    import importlib

    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken native extension
        pytest.skip(f"mediapipe is not importable here ({type(exc).__name__}: {exc}); "
                    "pip install mediapipe to run the real-client checks")


def litert_run(path: Path, images: np.ndarray) -> np.ndarray:
    """Raw output tensor of the file for uint8 pixels (cast to the file's input type)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    results = []
    for image in images:
        interp.set_tensor(inp["index"], image[None].astype(inp["dtype"]))
        interp.invoke()
        results.append(interp.get_tensor(out["index"])[0].copy())
    return np.stack(results)


def dequantize(path: Path, raw: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    scale, zero_point = Interpreter(model_path=str(path)).get_output_details()[0]["quantization"]
    return (raw.astype(np.float32) - zero_point) * scale if scale else raw.astype(np.float32)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Trained tiny model; float and uint8 files, each without and with metadata."""
    from edgetl._compat import keras, tf
    from edgetl.compiler.export.convert import export_tflite
    from edgetl.models import create_model
    from edgetl.runtime import ModelInfo

    folder = tmp_path_factory.mktemp("metadata")
    keras.utils.set_random_seed(0)
    model = create_model("tiny_cnn", weights=None, num_classes=len(LABELS))
    x, y = colour_images(16, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x.astype(np.float32), y, epochs=15, batch_size=16, verbose=0)

    files = {"float": export_tflite(model, folder / "float.tflite")}
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None].astype(np.float32)] for image in x)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    files["uint8"] = folder / "uint8.tflite"
    with warnings.catch_warnings():  # "Statistics for quantized inputs": the calibration gives them
        warnings.simplefilter("ignore", UserWarning)
        files["uint8"].write_bytes(converter.convert())
    # --io-dtype int8: what edgetl's own converter makes (input q = pixel - 128).
    from edgetl.compiler.compression.quantize import convert_tflite

    files["int8"] = folder / "int8.tflite"
    files["int8"].write_bytes(convert_tflite(model, "int8", calibration=x, io_dtype="int8"))
    # --io-dtype uint8 (the default): tiny_cnn's (x - 127.5) / 127.5 folded into the input quantization.
    files["uint8_edgetl"] = folder / "uint8_edgetl.tflite"
    files["uint8_edgetl"].write_bytes(convert_tflite(model, "int8", calibration=x, io_dtype="uint8"))

    info = ModelInfo(labels=tuple(LABELS), input_size=SIZE, resize_policy="bilinear stretch", model="tiny_cnn")
    with_md = {}
    for kind, path in files.items():
        with_md[kind] = folder / f"{kind}_md" / "model.tflite"  # alone in its folder: no labels.txt beside it
        with_md[kind].parent.mkdir()
        with_md[kind].write_bytes(
            md.add_tflite_metadata(path.read_bytes(), labels=LABELS, model_info=info.to_json(), **FIELDS)
        )
    test_x, test_y = colour_images(2, seed=1)
    return {"model": model, "plain": files, "md": with_md, "x": test_x, "y": test_y, "folder": folder}


@pytest.mark.parametrize("kind", ["float", "uint8", "int8"])
def test_litert_outputs_unchanged(built, kind):
    plain, with_md = built["plain"][kind], built["md"][kind]
    x = built["x"] if kind != "int8" else (built["x"].astype(np.int16) - 128)  # int8 input: pixel - 128
    before, after = litert_run(plain, x), litert_run(with_md, x)
    assert before.dtype == after.dtype == {"float": np.float32, "uint8": np.uint8, "int8": np.int8}[kind]
    np.testing.assert_array_equal(before, after)
    # The trained model does tell the colours apart (or the MediaPipe test below proves little).
    assert (before.argmax(1) == built["y"]).all()


@pytest.mark.parametrize("kind", ["float", "uint8", "int8"])
def test_weights_and_graph_kept(built, kind):
    from tensorflow.lite.python import schema_py_generated as schema

    old_bytes, new_bytes = built["plain"][kind].read_bytes(), built["md"][kind].read_bytes()
    old, new = (schema.Model.GetRootAsModel(b, 0) for b in (old_bytes, new_bytes))
    assert new.BuffersLength() == old.BuffersLength() + 1
    for i in range(old.BuffersLength()):
        a, b = old.Buffers(i), new.Buffers(i)
        assert a.DataLength() == b.DataLength()
        if a.DataLength():
            assert a.DataAsNumpy().tobytes() == b.DataAsNumpy().tobytes()
    assert new.Subgraphs(0).OperatorsLength() == old.Subgraphs(0).OperatorsLength()
    names = [new.Metadata(i).Name() for i in range(new.MetadataLength())]
    assert names == [old.Metadata(i).Name() for i in range(old.MetadataLength())] + [b"TFLITE_METADATA"]
    # The zip holding the associated files is appended, stored (MediaPipe refuses deflated ones).
    with zipfile.ZipFile(built["md"][kind]) as zf:
        assert sorted(zf.namelist()) == ["labels.txt", "model_info.json"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        assert zf.read("labels.txt").decode() == "red\ngreen\nblue\n"


@pytest.mark.parametrize("kind", ["float", "uint8", "int8", "uint8_edgetl"])
def test_read_back(built, kind):
    meta = md.read_tflite_metadata(built["md"][kind])
    assert {k: meta[k] for k in FIELDS} == FIELDS
    assert meta["labels"] == LABELS
    assert meta["model_info"]["labels"] == LABELS
    assert meta["min_parser_version"] == "1.0.0"
    assert meta["input_size"] == [SIZE, SIZE]
    assert meta["input_kind"] == {"float": "float_raw_pixels", "int8": "int8"}.get(kind, "uint8")
    (sub,) = meta["subgraphs"]
    (inp,), (out,) = sub["inputs"], sub["outputs"]
    assert inp["content"] == "image" and inp["color_space"] == "RGB"
    assert inp["stats"] == {"min": [0.0], "max": [255.0]}
    # Float input is raw 0..255 with normalisation inside the graph: the client must pass pixels as
    # they are. The uint8 file here is a plain conversion (input scale 1, zero point 0): no
    # normalisation options. The int8 one is edgetl's (convert_tflite): tiny_cnn's (x - 127.5) / 127.5
    # is folded into its input quantization, and the options say what the model reads.
    if kind in ("int8", "uint8_edgetl"):
        norm = inp["normalization"]
        assert abs(norm["mean"][0] - 127.5) <= 0.5 and norm["std"] == pytest.approx([127.5])
        assert f"(pixel - {norm['mean'][0]:g}) / 127.5" in inp["description"]
        assert ("pixel - 128" if kind == "int8" else "raw pixel values 0..255 as uint8") in inp["description"]
    else:
        assert inp["normalization"] == ({"mean": [0.0], "std": [1.0]} if kind == "float" else None)
    assert out["content"] == "feature"
    assert out["stats"] == {"min": [0.0], "max": [1.0]}
    assert [(f["name"], f["type"]) for f in out["associated_files"]] == [("labels.txt", "TENSOR_AXIS_LABELS")]
    # Bytes and path give the same answer.
    assert md.read_tflite_metadata(built["md"][kind].read_bytes()) == meta


def test_metadata_matches_mediapipe_schema_reader(built):
    """What we write, read by the flatbuffers code generated from metadata_schema.fbs."""
    ms = mediapipe_module("mediapipe.tasks.metadata.metadata_schema_py_generated")
    from tensorflow.lite.python import schema_py_generated as schema

    data = built["md"]["float"].read_bytes()
    model = schema.Model.GetRootAsModel(data, 0)
    (entry,) = [model.Metadata(i) for i in range(model.MetadataLength()) if model.Metadata(i).Name() == b"TFLITE_METADATA"]
    buf = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    assert ms.ModelMetadata.ModelMetadataBufferHasIdentifier(buf, 0)
    meta = ms.ModelMetadataT.InitFromObj(ms.ModelMetadata.GetRootAsModelMetadata(buf, 0))
    assert (meta.name, meta.version, meta.author, meta.license) == (b"tiny colours", b"1.2.3", b"edgetl tests", b"Apache-2.0")
    (sub,) = meta.subgraphMetadata
    (inp,), (out,) = sub.inputTensorMetadata, sub.outputTensorMetadata
    assert inp.content.contentPropertiesType == ms.ContentProperties.ImageProperties
    assert inp.content.contentProperties.colorSpace == ms.ColorSpaceType.RGB
    (unit,) = inp.processUnits
    assert unit.optionsType == ms.ProcessUnitOptions.NormalizationOptions
    assert list(unit.options.mean) == [0.0] and list(unit.options.std) == [1.0]
    assert list(inp.stats.min) == [0.0] and list(inp.stats.max) == [255.0]
    assert out.content.contentPropertiesType == ms.ContentProperties.FeatureProperties
    (labels,) = out.associatedFiles
    assert (labels.name, labels.type) == (b"labels.txt", ms.AssociatedFileType.TENSOR_AXIS_LABELS)


def _metadata_buffer(data: bytes):
    """(the TFLITE_METADATA buffer's bytes, its offset in the file), read with ai_edge_litert's TFLite schema."""
    from ai_edge_litert import schema_py_generated as tfl

    model = tfl.Model.GetRootAs(data, 0)
    (entry,) = [model.Metadata(i) for i in range(model.MetadataLength()) if model.Metadata(i).Name() == b"TFLITE_METADATA"]
    buffer = model.Buffers(entry.Buffer())
    return buffer.DataAsNumpy().tobytes(), buffer._tab.Vector(buffer._tab.Offset(4))  # field `data`: vtable slot 4


@pytest.mark.parametrize("kind", ["float", "uint8", "int8", "uint8_edgetl"])
def test_metadata_round_trips_through_the_generated_bindings(built, kind):
    """The project's own flatc bindings read back every field written, and re-packing what they read gives
    the same bytes (nothing written that the schema does not know, nothing lost); the buffer is 16-byte
    aligned as schema.fbs asks (`force_align: 16`)."""
    import flatbuffers

    from edgetl.compiler.export import metadata_schema_py_generated as ms

    buf, offset = _metadata_buffer(built["md"][kind].read_bytes())
    assert offset % 16 == 0
    assert ms.ModelMetadata.ModelMetadataBufferHasIdentifier(buf, 0)
    meta = ms.ModelMetadataT.InitFromObj(ms.ModelMetadata.GetRootAs(buf, 0))
    builder = flatbuffers.Builder(0)
    builder.Finish(meta.Pack(builder), b"M001")
    assert bytes(builder.Output()) == buf

    assert {k: getattr(meta, k).decode() for k in FIELDS} == FIELDS and meta.minParserVersion == b"1.0.0"
    assert [(f.name, f.type) for f in meta.associatedFiles] == [(b"model_info.json", ms.AssociatedFileType.UNKNOWN)]
    (sub,) = meta.subgraphMetadata
    (inp,), (out,) = sub.inputTensorMetadata, sub.outputTensorMetadata
    assert inp.content.contentPropertiesType == ms.ContentProperties.ImageProperties
    assert inp.content.contentProperties.colorSpace == ms.ColorSpaceType.RGB
    assert (list(inp.stats.min), list(inp.stats.max)) == ([0.0], [255.0])
    units = [(u.optionsType, list(u.options.mean), list(u.options.std)) for u in inp.processUnits or []]
    normalisation = ms.ProcessUnitOptions.NormalizationOptions
    if kind == "float":
        assert units == [(normalisation, [0.0], [1.0])]
    elif kind == "uint8":  # a plain conversion: input scale 1, zero point 0, nothing folded
        assert units == []
    else:  # tiny_cnn's (x - 127.5) / 127.5 folded into the input quantization
        ((unit_type, mean, std),) = units
        assert unit_type == normalisation and abs(mean[0] - 127.5) <= 0.5 and std == pytest.approx([127.5])
    assert out.content.contentPropertiesType == ms.ContentProperties.FeatureProperties
    assert (list(out.stats.min), list(out.stats.max)) == ([0.0], [1.0])
    assert [(f.name, f.type) for f in out.associatedFiles] == [(b"labels.txt", ms.AssociatedFileType.TENSOR_AXIS_LABELS)]


def test_metadata_is_written_and_read_without_tensorflow(built):
    """The schema modules are ai_edge_litert's and the generated bindings: TensorFlow is never imported."""
    import subprocess
    import sys

    code = (
        "import sys; from edgetl.compiler.export import metadata as md; "
        f"data = md.add_tflite_metadata(open({str(built['plain']['int8'])!r}, 'rb').read(), labels={LABELS!r}, "
        f"model_info={{'labels': {LABELS!r}}}, **{FIELDS!r}); "
        f"assert md.read_tflite_metadata(data)['labels'] == {LABELS!r}; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'keras', 'mediapipe')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_generated_bindings_come_from_the_committed_schema():
    """compiler/export/metadata_schema_py_generated.py names the sha256 of the .fbs it was generated from: editing
    compiler/export/metadata_schema.fbs without regenerating (the command is in that header) fails here."""
    import hashlib
    import re

    compiler = Path(__file__).resolve().parents[1] / "compiler" / "export"
    header = (compiler / "metadata_schema_py_generated.py").read_text()[:2000]
    schema_sha256 = hashlib.sha256((compiler / "metadata_schema.fbs").read_bytes()).hexdigest()
    assert re.search(r"sha256\W+([0-9a-f]{64})", header)[1] == schema_sha256
    assert "GENERATED CODE" in header and "flatc --python --gen-object-api" in header


def test_litert_schema_knows_every_field_of_tensorflows_converter():
    """Models are re-packed with ai_edge_litert's TFLite schema bindings; a field that TensorFlow's converter
    writes and those bindings do not know would be dropped silently (the pyproject lower bound is why)."""
    from ai_edge_litert import schema_py_generated as litert_schema
    from tensorflow.lite.python import schema_py_generated as tf_schema

    def fields(module) -> set[str]:
        return {name for name in vars(module) if "Add" in name and callable(getattr(module, name))}

    assert fields(tf_schema) - fields(litert_schema) == set()


@pytest.mark.parametrize("kind", ["float", "uint8", "uint8_edgetl"])
def test_mediapipe_image_classifier_returns_our_labels(built, kind):
    """The real client: MediaPipe Tasks loads the file and names the categories with our labels."""
    mp = mediapipe_module("mediapipe")
    vision = mediapipe_module("mediapipe.tasks.python.vision")
    BaseOptions = mediapipe_module("mediapipe.tasks.python").BaseOptions

    path = built["md"][kind]
    expected = dequantize(path, litert_run(path, built["x"]))
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)))
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for image, label, want in zip(built["x"], built["y"], expected):
            # Already at the model's input size, so MediaPipe's own resize changes nothing.
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
            categories = result.classifications[0].categories
            assert sorted(c.category_name for c in categories) == sorted(LABELS)
            assert all(c.category_name == LABELS[c.index] for c in categories)
            assert categories[0].category_name == LABELS[int(want.argmax())] == LABELS[label]
            scores = np.zeros(len(LABELS), np.float32)
            for c in categories:
                scores[c.index] = c.score
            np.testing.assert_allclose(scores, want, atol=1e-5)


def test_int8_input_file_is_read_by_mediapipe_but_not_run(built):
    """--io-dtype int8: MediaPipe's metadata reader takes the file (labels, image properties),
    while its ImageClassifier refuses int8 input tensors (MediaPipe's limit, said in the README).
    If a MediaPipe release lifts that limit, this test fails and the README must change."""
    ms = mediapipe_module("mediapipe.tasks.metadata.metadata_schema_py_generated")
    vision = mediapipe_module("mediapipe.tasks.python.vision")
    BaseOptions = mediapipe_module("mediapipe.tasks.python").BaseOptions
    from tensorflow.lite.python import schema_py_generated as schema

    data = built["md"]["int8"].read_bytes()
    model = schema.Model.GetRootAsModel(data, 0)
    (entry,) = [model.Metadata(i) for i in range(model.MetadataLength()) if model.Metadata(i).Name() == b"TFLITE_METADATA"]
    buf = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    meta = ms.ModelMetadataT.InitFromObj(ms.ModelMetadata.GetRootAsModelMetadata(buf, 0))
    (sub,) = meta.subgraphMetadata
    (inp,), (out,) = sub.inputTensorMetadata, sub.outputTensorMetadata
    assert inp.content.contentProperties.colorSpace == ms.ColorSpaceType.RGB
    (unit,) = inp.processUnits  # the folded normalisation, as the int8 input's quantization gives it
    assert unit.optionsType == ms.ProcessUnitOptions.NormalizationOptions and list(unit.options.std) == [127.5]
    (labels,) = out.associatedFiles
    assert (labels.name, labels.type) == (b"labels.txt", ms.AssociatedFileType.TENSOR_AXIS_LABELS)
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(built["md"]["int8"])))
    with pytest.raises(Exception, match="uint8/float32"):
        vision.ImageClassifier.create_from_options(options)


def test_float_input_without_metadata_is_refused_by_mediapipe(built):
    """Why the metadata is needed at all (ENVIRONMENT.md): no NormalizationOptions, no float model."""
    vision = mediapipe_module("mediapipe.tasks.python.vision")
    BaseOptions = mediapipe_module("mediapipe.tasks.python").BaseOptions

    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(built["plain"]["float"])))
    with pytest.raises(Exception, match="NormalizationOptions"):
        vision.ImageClassifier.create_from_options(options)


@pytest.mark.parametrize("kind", ["float", "uint8", "int8"])
def test_edgetl_runtime_reads_labels_from_the_file(built, kind):
    from edgetl.runtime import open_session

    path = built["md"][kind]
    session = open_session(path, threads=1)
    x = built["x"] if kind != "int8" else (built["x"].astype(np.int16) - 128)
    probs = session.run(built["x"])  # raw pixels in, whatever the file's input type
    np.testing.assert_allclose(probs, dequantize(path, litert_run(built["plain"][kind], x)), atol=1e-6)
    assert (probs.argmax(1) == built["y"]).all()
    info = session.info()
    assert list(info.labels) == LABELS
    assert info.input_size == SIZE


def test_idempotent_and_deterministic(built, tmp_path):
    plain = built["plain"]["float"].read_bytes()
    once = md.add_tflite_metadata(plain, labels=LABELS, **FIELDS)
    assert md.add_tflite_metadata(plain, labels=LABELS, **FIELDS) == once
    written = md.add_tflite_metadata_file(built["plain"]["float"], tmp_path / "out" / "m.tflite", labels=LABELS, **FIELDS)
    assert written.read_bytes() == once and sorted(p.name for p in written.parent.iterdir()) == ["m.tflite"]
    assert md.add_tflite_metadata(once, labels=LABELS, **FIELDS) == once  # replaces, never stacks
    relabelled = md.add_tflite_metadata(once, labels=["r", "g", "b"], **{**FIELDS, "version": "2"})
    meta = md.read_tflite_metadata(relabelled)
    assert meta["labels"] == ["r", "g", "b"] and meta["version"] == "2" and meta["model_info"] is None
    assert len(relabelled) < len(once) + 100  # the old zip and metadata are gone, not kept


def test_buffers_outside_the_flatbuffer_are_taken_in(built, tmp_path):
    """TF converters can store weights after the flatbuffer (Buffer.offset/size); re-packing keeps them."""
    from edgetl._compat import tf
    from tensorflow.lite.python import schema_py_generated as schema

    converter = tf.lite.TFLiteConverter.from_keras_model(built["model"])
    converter._experimental_use_buffer_offset = True
    data = converter.convert()
    model = schema.Model.GetRootAsModel(data, 0)
    assert any(model.Buffers(i).Offset() > 1 for i in range(model.BuffersLength()))
    (tmp_path / "offset.tflite").write_bytes(data)
    (tmp_path / "offset_md.tflite").write_bytes(md.add_tflite_metadata(data, labels=LABELS, **FIELDS))
    np.testing.assert_array_equal(
        litert_run(tmp_path / "offset.tflite", built["x"]), litert_run(tmp_path / "offset_md.tflite", built["x"])
    )
    assert md.read_tflite_metadata(tmp_path / "offset_md.tflite")["labels"] == LABELS


def test_errors(built, tmp_path):
    plain_float, plain_uint8 = built["plain"]["float"].read_bytes(), built["plain"]["uint8"].read_bytes()
    with pytest.raises(MetadataError, match="2 labels given"):
        md.add_tflite_metadata(plain_float, labels=LABELS[:2], **FIELDS)
    with pytest.raises(MetadataError, match="uint8 input tensor"):
        md.add_tflite_metadata(plain_float, labels=LABELS, input_kind="uint8", **FIELDS)
    with pytest.raises(MetadataError, match="float32 input tensor"):
        md.add_tflite_metadata(plain_uint8, labels=LABELS, input_kind="float_raw_pixels", **FIELDS)
    with pytest.raises(MetadataError, match="single lines"):
        md.add_tflite_metadata(plain_float, labels=["a", "b\nc", "d"], **FIELDS)
    with pytest.raises(ModelFileError, match="not a TFLite model"):
        md.add_tflite_metadata(b"PK\x03\x04 not a model at all", labels=LABELS, **FIELDS)
    with pytest.raises(MetadataError, match="no TFLite metadata"):
        md.read_tflite_metadata(built["plain"]["float"])


def test_onnx_metadata_props_round_trip(built, tmp_path):
    import onnxruntime as ort

    from edgetl.compiler.export.convert import export_onnx
    from edgetl.runtime import ModelInfo, open_session

    path = export_onnx(built["model"], tmp_path / "model.onnx")
    pixels = built["x"].astype(np.float32)

    def run():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: pixels})[0]

    before = run()
    info = ModelInfo(labels=tuple(LABELS), input_size=SIZE, resize_policy="bilinear stretch", model="tiny_cnn")
    props = md.onnx_classifier_props(labels=LABELS, input_size=SIZE, model_info=info.to_json(), **FIELDS)
    md.add_onnx_metadata(path, props)
    md.add_onnx_metadata(path, {"extra": {"any": "json"}, "version": "9"})  # merges, replaces a key
    got = md.read_onnx_metadata(path)
    assert got == {**props, "extra": '{"any": "json"}', "version": "9"}
    assert json.loads(got["labels"]) == LABELS and json.loads(got["input_size"]) == [SIZE, SIZE]
    np.testing.assert_array_equal(run(), before)
    np.testing.assert_allclose(before.argmax(1), built["y"])
    assert list(open_session(path, threads=1).info().labels) == LABELS
    assert not list(tmp_path.glob(".model.*"))  # atomic write left no temporary file
    with pytest.raises(ModelFileError):
        md.read_onnx_metadata(tmp_path / "missing.onnx")
