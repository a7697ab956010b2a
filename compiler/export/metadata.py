"""App-ready metadata inside the deployed files: TFLite metadata and ONNX `metadata_props`.

TFLite: the convention MediaPipe Tasks (and the TFLite Task Library) read. The model gains a
`Buffer` holding a `ModelMetadata` flatbuffer (schema `metadata_schema.fbs`, identifier "M001")
and a `Metadata` entry "TFLITE_METADATA" pointing at it; the files the metadata names (labels.txt,
model_info.json) are in a zip appended to the file, offsets counted from the file's start, so the
file is at once a valid model and a valid zip. The input's NormalizationOptions tell a client
what to feed: raw pixels for a float32 input (mean 0, std 1: normalisation is in the graph), the
pixel bytes for uint8 (int8: minus 128), with the model's normalisation when it is folded into
that input's quantization (EfficientNet-Lite: mean 127, std 128, as Model Maker writes).
No schema is transcribed here, and neither TensorFlow, mediapipe nor tflite-support (which pins
protobuf<4) is needed: the model is read and re-packed with ai-edge-litert's TFLite schema
bindings, the metadata built and read with the bindings flatc generated from metadata_schema.fbs
(`metadata_schema_py_generated.py` beside this file; its header says how to regenerate them).
ONNX: the same facts as string pairs in `metadata_props` (`labels` as a JSON list and
`model_info` as JSON, which `edgetl.runtime` reads, plus plain keys for people).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as tfl

from edgetl.compiler.export import metadata_schema_py_generated as ms
from edgetl.compiler.compression.quantize import pack_tflite
from edgetl.errors import MetadataError, ModelFileError

TFLITE_IDENTIFIER = b"TFL3"  # model flatbuffer, bytes 4..8 of every .tflite
METADATA_IDENTIFIER = b"M001"  # metadata flatbuffer (metadata_schema.fbs `file_identifier`)
METADATA_NAME = "TFLITE_METADATA"  # name of the model's Metadata entry that clients look for
LABELS_FILE = "labels.txt"
MODEL_INFO_FILE = "model_info.json"
# Oldest metadata parser that understands every field we write: all are in the schema's first
# version (none of the later ones: ImageProperties.default_size, Content.range, tensor groups...).
MIN_PARSER_VERSION = "1.0.0"

INPUT_KINDS = ("float_raw_pixels", "uint8", "int8")
# The input tensor type each kind describes (the inverse maps a tensor type to its kind).
_INPUT_TYPES = {"float_raw_pixels": "FLOAT32", "uint8": "UINT8", "int8": "INT8"}
_KIND_OF_TYPE = {t: k for k, t in _INPUT_TYPES.items()}
OUTPUT_KINDS = ("probabilities",)

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamp: same inputs, same bytes (artefact hashes)
# Code -> name of the generated enums we report by name.
_TENSOR_TYPES, _FILE_TYPES, _COLOR_SPACES = (
    {code: name for name, code in vars(enum).items() if not name.startswith("_")}
    for enum in (tfl.TensorType, ms.AssociatedFileType, ms.ColorSpaceType)
)


# ---- The metadata flatbuffer, written and read through the generated object API


def _table(cls, **fields):
    """`cls()`, an object-API class of the generated bindings, with `fields` set."""
    obj = cls()
    assert set(fields) <= set(vars(obj)), f"{cls.__name__}: no field {set(fields) - set(vars(obj))}"  # misspelt?
    vars(obj).update(fields)
    return obj


def _tensor(name: str, description: str, properties, stats: tuple[float, float], normalization=None, files=None):
    """TensorMetadataT with content `properties` (an object of the ContentProperties union);
    `stats` is (min, max), `normalization` (mean, std) or None."""
    kind = getattr(ms.ContentProperties, type(properties).__name__[:-1])  # ImagePropertiesT -> ImageProperties
    content = _table(ms.ContentT, contentPropertiesType=kind, contentProperties=properties)
    options = normalization and _table(ms.NormalizationOptionsT, mean=[normalization[0]], std=[normalization[1]])
    normalize = ms.ProcessUnitOptions.NormalizationOptions
    units = options and [_table(ms.ProcessUnitT, optionsType=normalize, options=options)]
    return _table(ms.TensorMetadataT, name=name, description=description, content=content, processUnits=units,
                  stats=_table(ms.StatsT, min=[stats[0]], max=[stats[1]]), associatedFiles=files)


def _metadata_bytes(fields: Mapping[str, str], input_kind: str, size: Sequence[int], quantization: tuple[float, int],
                    num_classes: int, model_files: Mapping[str, str]) -> bytes:
    """The ModelMetadata flatbuffer of an image classifier: `fields` (name, description, version,
    author, license), one subgraph with the image input (`input_kind`, `size`, the input's
    (scale, zero point)) and a probabilities output, `model_files` ({name: description})."""
    where = f"Input image: RGB, {size[0]}x{size[1]}"
    if input_kind == "float_raw_pixels":
        description = (f"{where}, raw pixel values 0..255 as float32 (the model normalises them itself, "
                       "hence normalisation mean 0, std 1).")
        normalization = (0.0, 1.0)
    else:
        # An integer input takes the pixel bytes (int8: minus 128). When its quantization is not
        # the identity on them, it is the model's normalisation folded into the input: say so
        # in NormalizationOptions, as Model Maker's uint8 models do (clients feed the bytes).
        scale, zero_point = quantization
        offset = 0 if input_kind == "uint8" else -128
        folded = not (scale == 1.0 and zero_point == offset)
        mean, std = zero_point - offset, float(f"{1.0 / scale:.6g}")  # 1/128 -> 128, not 127.99999
        reads = f"; the model reads them as (pixel - {mean:g}) / {std:g}" if folded else ""
        description = f"{where}, raw pixel values 0..255 as uint8{reads}."
        if input_kind == "int8":
            description = (f"{where}, pixel values 0..255 as int8 pixel - 128 (scale {scale:g}, "
                           f"zero point {zero_point}{reads}).")
        normalization = (float(mean), float(std)) if folded else None
    image = _tensor("image", description, _table(ms.ImagePropertiesT, colorSpace=ms.ColorSpaceType.RGB), (0.0, 255.0),
                    normalization)
    labels = _table(ms.AssociatedFileT, name=LABELS_FILE, type=ms.AssociatedFileType.TENSOR_AXIS_LABELS,
                    description="Labels for categories that the model can recognize.")
    output = _tensor("probability", f"Probabilities of the {num_classes} labels respectively.", ms.FeaturePropertiesT(),
                     (0.0, 1.0), files=[labels])
    extra = [_table(ms.AssociatedFileT, name=n, description=d, type=ms.AssociatedFileType.UNKNOWN)
             for n, d in model_files.items()]
    subgraph = _table(ms.SubGraphMetadataT, inputTensorMetadata=[image], outputTensorMetadata=[output])
    root = _table(ms.ModelMetadataT, **fields, subgraphMetadata=[subgraph], associatedFiles=extra or None,
                  minParserVersion=MIN_PARSER_VERSION)
    builder = flatbuffers.Builder(1024)
    builder.Finish(root.Pack(builder), METADATA_IDENTIFIER)
    return bytes(builder.Output())


def _text(value) -> str | None:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _files(files) -> list[dict]:
    return [{"name": _text(f.name), "description": _text(f.description), "type": _FILE_TYPES.get(f.type, str(f.type))}
            for f in files or []]


def _tensor_dict(t) -> dict:
    def _floats(values) -> list[float] | None:
        return None if values is None else [float(x) for x in values]

    out = {"name": _text(t.name), "description": _text(t.description), "content": None}
    if t.content is not None:
        kind, props = t.content.contentPropertiesType, t.content.contentProperties
        if kind == ms.ContentProperties.ImageProperties and props is not None:
            out["content"], out["color_space"] = "image", _COLOR_SPACES.get(props.colorSpace, str(props.colorSpace))
        else:
            out["content"] = "feature" if kind == ms.ContentProperties.FeatureProperties else f"content type {kind}"
    units = [u.options for u in t.processUnits or [] if u.optionsType == ms.ProcessUnitOptions.NormalizationOptions]
    out["normalization"] = {"mean": _floats(units[-1].mean), "std": _floats(units[-1].std)} if units else None
    out["stats"] = None if t.stats is None else {"min": _floats(t.stats.min), "max": _floats(t.stats.max)}
    out["associated_files"] = _files(t.associatedFiles)
    return out


def parse_metadata_buffer(buf: bytes) -> dict:
    """A ModelMetadata flatbuffer (identifier M001) -> dict: name, description, version, author,
    license, min_parser_version, associated_files (model level) and subgraphs (name, inputs and
    outputs: name, description, content, color_space, normalization, stats, associated_files)."""
    buf = bytes(buf)
    if len(buf) < 8 or not ms.ModelMetadata.ModelMetadataBufferHasIdentifier(buf, 0):
        raise MetadataError("the TFLITE_METADATA buffer is not a metadata flatbuffer (no 'M001' identifier)")
    meta = ms.ModelMetadataT.InitFromObj(ms.ModelMetadata.GetRootAs(buf, 0))
    result = {key: _text(getattr(meta, key)) for key in ("name", "description", "version", "author", "license")}
    result.update(min_parser_version=_text(meta.minParserVersion), associated_files=_files(meta.associatedFiles))
    result["subgraphs"] = [
        {"name": _text(sg.name), "inputs": [_tensor_dict(t) for t in sg.inputTensorMetadata or []],
         "outputs": [_tensor_dict(t) for t in sg.outputTensorMetadata or []],
         "associated_files": _files(sg.associatedFiles)}
        for sg in meta.subgraphMetadata or []
    ]
    return result


# ---- The TFLite model: read, add the metadata buffer, re-pack; read back


def _read_tflite(path_or_bytes) -> tuple[bytes, str]:
    """(the bytes of a .tflite given as a path or as bytes, what to call it in errors)."""
    what = "model"
    if not isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        what = str(path_or_bytes)
        try:
            path_or_bytes = Path(path_or_bytes).read_bytes()
        except OSError as exc:
            raise ModelFileError(f"{what}: cannot read ({exc.strerror or exc})") from None
    buf = bytes(path_or_bytes)
    if len(buf) < 8 or buf[4:8] != TFLITE_IDENTIFIER:
        raise ModelFileError(f"{what}: not a TFLite model (no 'TFL3' flatbuffer identifier at the start)")
    return buf, what


def _unpack_model(buf: bytes, what: str):
    """ModelT of a .tflite, the data of buffers stored after the flatbuffer (Buffer.offset > 1,
    as converters do for models over 2 GB) read in so that re-packing keeps it. (ai_edge_litert's
    flatbuffer_utils does that too but also renumbers the empty buffers: another buffer list.)"""
    try:
        model = tfl.ModelT.InitFromObj(tfl.Model.GetRootAs(buf, 0))
    except Exception as exc:  # noqa: BLE001 - a corrupt flatbuffer raises anything from struct to IndexError
        raise ModelFileError(f"{what}: unreadable TFLite flatbuffer ({type(exc).__name__}: {exc})") from None
    for i, b in [(i, b) for i, b in enumerate(model.buffers or []) if b.offset and b.offset > 1]:
        start, size = int(b.offset), int(b.size)
        if start + size > len(buf):
            raise ModelFileError(f"{what}: buffer {i} lies outside the file (bytes {start}..{start + size} of "
                                 f"{len(buf)}); the file is truncated")
        b.data = np.frombuffer(buf, dtype=np.uint8, count=size, offset=start)
        b.offset, b.size = 0, 0
    return model


def add_tflite_metadata(
    tflite: bytes, *, name: str, description: str, version: str, author: str, license: str, labels: Sequence[str],
    input_kind: str | None = None, output_kind: str = "probabilities", model_info: Mapping | None = None,
) -> bytes:
    """`tflite` (the bytes of an image classifier .tflite) with TFLite metadata and labels.

    input_kind: "float_raw_pixels" (float32 input, raw RGB 0..255, normalisation inside the
    graph: what edgetl exports), "uint8" (raw pixels) or "int8" (pixels - 128); None: taken
    from the input tensor's type, which it must match. output_kind: "probabilities" (float32,
    uint8 or int8, one score per label). labels: in output order (labels.txt, one per line).
    model_info: edgetl's model_info.json content, stored in the zip for `edgetl.runtime`.
    Earlier metadata is replaced (idempotent); the same arguments give the same bytes.
    """
    buf, _ = _read_tflite(tflite)
    model, what = _unpack_model(buf, "model"), f"model {name!r}"
    if not model.subgraphs:
        raise ModelFileError(f"{what}: the model has no subgraph")
    sg = model.subgraphs[0]
    if len(sg.inputs) != 1 or len(sg.outputs) != 1:
        raise MetadataError(f"{what}: expected one image input and one output, found {len(sg.inputs)} inputs and "
                            f"{len(sg.outputs)} outputs; metadata is written for image classifiers only")
    inp, out = sg.tensors[int(sg.inputs[0])], sg.tensors[int(sg.outputs[0])]

    # -- the model must be the classifier the metadata describes
    in_type, out_type = (_TENSOR_TYPES.get(t.type, str(t.type)) for t in (inp, out))
    input_kind = _KIND_OF_TYPE.get(in_type, in_type) if input_kind is None else input_kind
    if input_kind not in INPUT_KINDS:
        raise MetadataError(f"{what}: input_kind {input_kind!r}: expected one of {', '.join(INPUT_KINDS)} "
                            "(an image input of type float32, uint8 or int8)")
    if in_type != _INPUT_TYPES[input_kind]:
        raise MetadataError(f"{what}: input_kind {input_kind!r} needs a {_INPUT_TYPES[input_kind].lower()} input "
                            f"tensor but the model's input is {in_type.lower()}")
    q = inp.quantization
    quantized = q is not None and q.scale is not None and len(q.scale) and q.zeroPoint is not None
    shape, out_shape = ([int(x) for x in (t.shape if t.shape is not None else [])] for t in (inp, out))
    if len(shape) != 4 or shape[3] != 3:
        raise MetadataError(f"{what}: input shape {shape} is not an NHWC RGB image [1, H, W, 3]")
    if output_kind not in OUTPUT_KINDS:
        raise MetadataError(f"{what}: output_kind {output_kind!r}: expected one of {', '.join(OUTPUT_KINDS)}")
    if out_type not in ("FLOAT32", "UINT8", "INT8"):
        raise MetadataError(f"{what}: output type {out_type.lower()} is not a score tensor (float32, uint8 or int8)")
    labels = [str(label) for label in labels]
    if not out_shape or out_shape[-1] != len(labels):
        raise MetadataError(f"{what}: {len(labels)} labels given but the output has shape {out_shape}")
    bad = [label for label in labels if not label.strip() or "\n" in label or "\r" in label]
    if bad:
        raise MetadataError(f"{what}: labels must be non-empty single lines; got {bad[:3]!r}")

    # -- the metadata flatbuffer and the files it names
    files, model_files = {LABELS_FILE: "".join(f"{label}\n" for label in labels).encode("utf-8")}, {}
    if model_info is not None:
        files[MODEL_INFO_FILE] = (json.dumps(model_info, indent=2) + "\n").encode("utf-8")
        model_files[MODEL_INFO_FILE] = "edgetl model_info.json: labels and the input contract."
    fields = {"name": name, "description": description, "version": version, "author": author, "license": license}
    quantization = (float(q.scale[0]), int(q.zeroPoint[0])) if quantized else (1.0, 0)
    meta = _metadata_bytes(fields, input_kind, shape[1:3], quantization, len(labels), model_files)

    # -- into the model: replace an earlier TFLITE_METADATA buffer, or add one at the end
    n_before = len(model.buffers)
    entries = [m for m in (model.metadata or []) if _text(m.name) == METADATA_NAME]
    for extra in entries[1:]:
        model.metadata.remove(extra)
    if entries:
        index = int(entries[0].buffer)
    else:
        index = len(model.buffers)
        model.buffers.append(None)
        model.metadata = (model.metadata or []) + [_table(tfl.MetadataT, name=METADATA_NAME, buffer=index)]
    originals = {i: b.data for i, b in enumerate(model.buffers) if i != index and b is not None}
    model.buffers[index] = _table(tfl.BufferT, data=np.frombuffer(meta, dtype=np.uint8))
    # Not the object API's own Pack: that would leave buffers unaligned (schema.fbs asks
    # `force_align: 16`, which the generated code ignores) and write every quantization vector
    # again, undoing the converter output's compaction (about 7% of an int8 file).
    try:
        packed = pack_tflite(model, len(buf) + len(meta))
    except flatbuffers.builder.BuilderSizeError:
        raise MetadataError(f"{what}: with metadata the model would be over 2 GB, more than a flatbuffer holds (its "
                            "weights are stored outside it); ship labels and normalisation beside the model") from None

    # -- every weight buffer of the re-packed model holds exactly the bytes it held before
    new, n_buffers = tfl.Model.GetRootAs(packed, 0), len(model.buffers)
    if new.BuffersLength() != n_buffers or n_buffers not in (n_before, n_before + 1):
        raise MetadataError(f"re-packing changed the number of buffers ({n_before} -> {new.BuffersLength()})")
    for i in range(n_buffers):
        b = new.Buffers(i)
        got = b"" if b.DataIsNone() else b.DataAsNumpy().tobytes()
        want = meta if i == index else b"" if originals.get(i) is None else np.asarray(originals[i], np.uint8).tobytes()
        if got != want or b.Offset() > 1:
            raise MetadataError(f"re-packing the model changed buffer {i} ({len(want)} -> {len(got)} bytes)")

    # -- the associated files, in a zip appended to the model. Stored, not deflated: MediaPipe reads
    # them in place and refuses a deflated archive ("Expected uncompressed zip archive.", mediapipe 1.2.3).
    result = io.BytesIO(packed)
    with zipfile.ZipFile(result, "a", compression=zipfile.ZIP_STORED) as zf:
        for file_name, data in files.items():
            info = zipfile.ZipInfo(file_name, date_time=_ZIP_DATE)
            info.compress_type, info.external_attr = zipfile.ZIP_STORED, 0o644 << 16
            zf.writestr(info, data)
    return result.getvalue()


def read_tflite_metadata(path_or_bytes) -> dict:
    """What `add_tflite_metadata` wrote, as a dict; MetadataError when the file has none. Keys:
    those of `parse_metadata_buffer`, files (names in the appended zip), labels (the output's
    TENSOR_AXIS_LABELS file, split into lines), model_info (the stored model_info.json, or
    None), input_kind and input_size (from the model's input tensor)."""
    buf, what = _read_tflite(path_or_bytes)
    try:
        model = tfl.Model.GetRootAs(buf, 0)
        entries = [model.Metadata(i) for i in range(model.MetadataLength())]
        entry = next((e for e in entries if _text(e.Name()) == METADATA_NAME), None)
        if entry is None:
            raise MetadataError(f"{what}: the model carries no TFLite metadata (no {METADATA_NAME} entry)")
        b = model.Buffers(entry.Buffer())
        meta_bytes = buf[b.Offset() : b.Offset() + b.Size()] if b.Offset() > 1 else b.DataAsNumpy().tobytes()
        inp = model.Subgraphs(0).Tensors(model.Subgraphs(0).Inputs(0))
        in_type, in_shape = _TENSOR_TYPES.get(inp.Type(), str(inp.Type())), [int(x) for x in inp.ShapeAsNumpy()]
    except MetadataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ModelFileError(f"{what}: unreadable TFLite flatbuffer ({type(exc).__name__}: {exc})") from None
    result = parse_metadata_buffer(meta_bytes)
    result["input_kind"] = _KIND_OF_TYPE.get(in_type, in_type.lower())
    result["input_size"] = in_shape[1:3] if len(in_shape) == 4 else None
    label_files = [f["name"] for sub in result["subgraphs"] for tensor in sub["outputs"]
                   for f in tensor["associated_files"] if f["type"] == "TENSOR_AXIS_LABELS"]

    # Only the entries used are read, into memory (never extracted: an entry name such as
    # "../../x" reaches no folder), and none that would inflate past the size limit.
    from edgetl.runtime.litert import MAX_ASSOCIATED_FILE_BYTES

    names, files = [], {}
    try:
        with zipfile.ZipFile(io.BytesIO(buf)) as zf:
            names = zf.namelist()
            for info in zf.infolist():
                if info.filename in (*label_files[:1], MODEL_INFO_FILE):
                    if info.file_size > MAX_ASSOCIATED_FILE_BYTES:
                        raise MetadataError(f"{what}: associated file {info.filename} would inflate to "
                                            f"{info.file_size} bytes (limit {MAX_ASSOCIATED_FILE_BYTES}); "
                                            "refusing to read it")
                    files[info.filename] = zf.read(info)
    except zipfile.BadZipFile:
        pass
    result["files"], result["labels"] = sorted(set(names)), None
    if label_files:
        if label_files[0] not in files:
            raise MetadataError(f"{what}: the metadata names {label_files[0]} but the file has no such associated file")
        result["labels"] = [line.strip() for line in files[label_files[0]].decode("utf-8").splitlines() if line.strip()]
    result["model_info"] = json.loads(files[MODEL_INFO_FILE].decode("utf-8")) if MODEL_INFO_FILE in files else None
    return result


def add_tflite_metadata_file(src: str | Path, dst: str | Path | None = None, **kwargs) -> Path:
    """`add_tflite_metadata` on a file, written atomically to `dst` (default: over `src`)."""
    from edgetl.atomic import atomic_write_bytes

    dst = Path(dst) if dst is not None else Path(src)
    atomic_write_bytes(dst, add_tflite_metadata(_read_tflite(src)[0], **kwargs))
    return dst


# ---- ONNX metadata_props


def onnx_classifier_props(
    *, name: str, description: str, version: str, author: str, license: str, labels: Sequence[str], input_size: int,
    model_info: Mapping | None = None,
) -> dict[str, str]:
    """The facts of the TFLite metadata as ONNX metadata_props (all values strings).

    `labels` (JSON list) and `model_info` (JSON) are the keys `edgetl.runtime` reads.
    """
    props = {
        "name": name, "description": description, "version": version, "author": author, "license": license,
        "labels": json.dumps([str(x) for x in labels], ensure_ascii=False),
        "input_size": json.dumps([int(input_size), int(input_size)]),
        "input_layout": "NHWC", "input_color_space": "RGB", "input_range": json.dumps([0, 255]),
        "normalization": "inside the model: feed raw RGB pixel values 0..255 (mean 0, std 1)",
        "output": "probabilities, one per label, in labels order",
    }
    if model_info is not None:
        props["model_info"] = json.dumps(model_info, ensure_ascii=False)
    return props


def _load_onnx(path: Path):
    """The ONNX model without its external weights (their references stay as they are)."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise ModelFileError(f"ONNX model not found: {path}") from None
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError and friends
        raise ModelFileError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None


def add_onnx_metadata(onnx_path: str | Path, props: Mapping[str, object]) -> Path:
    """Set `props` as the ONNX model's metadata_props (other keys kept), atomically in place.

    Values that are not strings are stored as JSON. Weights kept in external data files stay
    there (the model is loaded without them and their references are written back unchanged).
    """
    import onnx

    from edgetl.atomic import atomic_path

    path = Path(onnx_path)
    model = _load_onnx(path)
    new = {str(k): v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in props.items()}
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in new]
    del model.metadata_props[:]
    for key, value in kept + sorted(new.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ONNX model's metadata_props as a dict of strings."""
    return {p.key: p.value for p in _load_onnx(Path(path)).metadata_props}


__all__ = [
    "INPUT_KINDS", "METADATA_NAME", "OUTPUT_KINDS", "add_onnx_metadata", "add_tflite_metadata",
    "add_tflite_metadata_file", "onnx_classifier_props", "parse_metadata_buffer", "read_onnx_metadata",
    "read_tflite_metadata",
]
