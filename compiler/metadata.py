"""App-ready metadata inside the deployed files: TFLite metadata and ONNX `metadata_props`.

TFLite: the metadata convention that MediaPipe Tasks (and the older TFLite Task Library) read.
A `.tflite` file with metadata is

    [ TFLite model flatbuffer (identifier "TFL3") ][ zip archive: labels.txt, ... ]

where the model gains one more `Buffer` holding a `ModelMetadata` flatbuffer (schema
`metadata_schema.fbs`, identifier "M001") and one `Metadata` entry named "TFLITE_METADATA"
pointing at that buffer. Files the metadata names (`AssociatedFile`) live in the zip appended to
the end of the file; zip offsets count from the start of the whole file, so the file is at the
same time a valid model and a valid zip (`zipfile.ZipFile("model.tflite")` lists them).

What we write, for an image classifier:
- model: name, description, version, author, license, min_parser_version;
- input tensor: ImageProperties(RGB); for a float32 input fed raw pixels 0..255 (edgetl's
  contract: normalisation is inside the graph) NormalizationOptions mean [0] std [1], so a client
  passes the pixels unchanged, and Stats min [0] max [255]; a uint8 input takes the pixel
  bytes as they are and an int8 input (`--io-dtype int8`, for runtimes that take int8
  tensors) the bytes minus 128, with the same Stats; when the model's normalisation is folded
  into that input's quantization (EfficientNet-Lite: scale 1/128, zero point 127), its
  NormalizationOptions give it (mean [127] std [128], what Model Maker writes for its uint8
  models), else there are none; the int8 description gives the tensor's quantization.
  MediaPipe's ImageClassifier reads such a file's metadata but refuses to run an int8 input
  tensor ("Requested one of these types: uint8/float32"): that is MediaPipe's limit;
- output tensor: FeatureProperties, Stats min [0] max [1] (probabilities) and `labels.txt` as a
  TENSOR_AXIS_LABELS associated file (one label per line, in output order).
Optionally a `model_info.json` (edgetl's own description of the input contract) is stored in
the zip too, as a model-level associated file; `edgetl.runtime` reads it from there.

No schema is transcribed here and neither TensorFlow, mediapipe nor tflite-support is needed
(mediapipe is a 43 MB wheel plus OpenCV; tflite-support pins protobuf<4, which TensorFlow 2.21
cannot share): the model is read and re-packed with ai-edge-litert's TFLite schema bindings
(`ai_edge_litert.schema_py_generated`, object API), and the metadata is built and read with
bindings that flatc generated from `metadata_schema.fbs` (`metadata_schema_py_generated.py`
beside this file; its header says how to regenerate it). The tests check what we write against
MediaPipe's own generated reader and its `ImageClassifier`.

ONNX: the same facts as string key/value pairs in the model's `metadata_props` (`labels` as a
JSON list and `model_info` as JSON, which `edgetl.runtime` reads, plus plain keys for people).
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

from edgetl.compiler import metadata_schema_py_generated as ms
from edgetl.compiler.quantize import pack_tflite
from edgetl.errors import EdgetlError, ModelFileError

TFLITE_IDENTIFIER = b"TFL3"  # model flatbuffer, bytes 4..8 of every .tflite
METADATA_IDENTIFIER = b"M001"  # metadata flatbuffer (metadata_schema.fbs `file_identifier`)
METADATA_NAME = "TFLITE_METADATA"  # name of the model's Metadata entry that clients look for
LABELS_FILE = "labels.txt"
MODEL_INFO_FILE = "model_info.json"
# Oldest metadata parser that understands every field we write: all of them are in the first
# version of the schema (we use no later addition such as ImageProperties.default_size,
# Content.range, tensor groups or subgraph-level process units).
MIN_PARSER_VERSION = "1.0.0"

INPUT_KINDS = ("float_raw_pixels", "uint8", "int8")
# The input tensor type each kind describes (the inverse maps a tensor type to its kind).
_INPUT_TYPES = {"float_raw_pixels": "FLOAT32", "uint8": "UINT8", "int8": "INT8"}
_KIND_OF_TYPE = {t: k for k, t in _INPUT_TYPES.items()}
OUTPUT_KINDS = ("probabilities",)

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamp: same inputs, same bytes (artefact hashes)
_MAX_FLATBUFFER = 2**31 - 1  # flatbuffers use signed 32-bit offsets: 2 GB is the hard limit


def _names(enum) -> dict[int, str]:
    """Code -> name of an enum class of the generated bindings."""
    return {v: k for k, v in vars(enum).items() if not k.startswith("_")}


_TENSOR_TYPES = _names(tfl.TensorType)
_FILE_TYPES = _names(ms.AssociatedFileType)
_COLOR_SPACES = _names(ms.ColorSpaceType)


class MetadataError(EdgetlError):
    """Metadata that cannot be written to (or read from) the given model."""


# --------------------------------------------------------------------------------------------
# The metadata flatbuffer, through the generated object API
# --------------------------------------------------------------------------------------------


def _table(cls, **fields):
    """`cls()` (an object-API class of the generated bindings) with `fields` set."""
    obj = cls()
    for key, value in fields.items():
        if not hasattr(obj, key):  # the classes have no __slots__: a typo would pass silently
            raise AttributeError(f"{cls.__name__} has no field {key!r}")
        setattr(obj, key, value)
    return obj


def _tensor(name: str, description: str, content, normalization=None, stats=(0.0, 1.0), files=()):
    """TensorMetadataT; `normalization` is (mean, std) or None, `stats` is (min, max)."""
    units = None
    if normalization is not None:
        options = _table(ms.NormalizationOptionsT, mean=[normalization[0]], std=[normalization[1]])
        units = [_table(ms.ProcessUnitT, optionsType=ms.ProcessUnitOptions.NormalizationOptions, options=options)]
    return _table(
        ms.TensorMetadataT,
        name=name,
        description=description,
        content=content,
        processUnits=units,
        stats=_table(ms.StatsT, min=[float(stats[0])], max=[float(stats[1])]),
        associatedFiles=list(files) or None,
    )


def _build_metadata(
    *,
    name: str,
    description: str,
    version: str,
    author: str,
    license: str,
    input_kind: str,
    input_size: tuple[int, int],
    num_classes: int,
    model_files: Sequence[tuple[str, str]] = (),
    input_quantization: tuple[float, int] = (1.0, 0),
) -> bytes:
    """The ModelMetadata flatbuffer of an image classifier (one subgraph, one input, one output)."""
    height, width = input_size
    if input_kind == "float_raw_pixels":
        input_description = (
            f"Input image: RGB, {height}x{width}, raw pixel values 0..255 as float32 (the model "
            "normalises them itself, hence normalisation mean 0, std 1)."
        )
        normalization = (0.0, 1.0)
    else:
        # An integer input takes the pixel bytes (int8: minus 128). When its quantization is not
        # the identity on them, it is the model's normalisation folded into the input: say so
        # in NormalizationOptions, as Model Maker's uint8 models do (clients feed the bytes).
        scale, zero_point = input_quantization
        offset = 0 if input_kind == "uint8" else -128
        folded = not (scale == 1.0 and zero_point == offset)
        mean, std = zero_point - offset, float(f"{1.0 / scale:.6g}")  # 1/128 -> 128, not 127.99999
        reads = f"; the model reads them as (pixel - {mean:g}) / {std:g}" if folded else ""
        if input_kind == "int8":
            input_description = (
                f"Input image: RGB, {height}x{width}, pixel values 0..255 as int8 pixel - 128 "
                f"(scale {scale:g}, zero point {zero_point}{reads})."
            )
        else:
            input_description = f"Input image: RGB, {height}x{width}, raw pixel values 0..255 as uint8{reads}."
        normalization = (float(mean), float(std)) if folded else None
    image = _table(
        ms.ContentT,
        contentPropertiesType=ms.ContentProperties.ImageProperties,
        contentProperties=_table(ms.ImagePropertiesT, colorSpace=ms.ColorSpaceType.RGB),
    )
    feature = _table(
        ms.ContentT,
        contentPropertiesType=ms.ContentProperties.FeatureProperties,
        contentProperties=ms.FeaturePropertiesT(),
    )
    labels = _table(
        ms.AssociatedFileT,
        name=LABELS_FILE,
        description="Labels for categories that the model can recognize.",
        type=ms.AssociatedFileType.TENSOR_AXIS_LABELS,
    )
    subgraph = _table(
        ms.SubGraphMetadataT,
        inputTensorMetadata=[_tensor("image", input_description, image, normalization, stats=(0.0, 255.0))],
        outputTensorMetadata=[
            _tensor("probability", f"Probabilities of the {num_classes} labels respectively.", feature, files=[labels])
        ],
    )
    extra = [_table(ms.AssociatedFileT, name=n, description=d, type=ms.AssociatedFileType.UNKNOWN) for n, d in model_files]
    root = _table(
        ms.ModelMetadataT,
        name=name,
        description=description,
        version=version,
        subgraphMetadata=[subgraph],
        author=author,
        license=license,
        associatedFiles=extra or None,
        minParserVersion=MIN_PARSER_VERSION,
    )
    builder = flatbuffers.Builder(1024)
    builder.Finish(root.Pack(builder), METADATA_IDENTIFIER)
    return bytes(builder.Output())


def _text(value) -> str | None:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else None if value is None else str(value)


def _floats(values) -> list[float] | None:
    return None if values is None else [float(x) for x in values]


def _files(files) -> list[dict]:
    return [
        {"name": _text(f.name), "description": _text(f.description), "type": _FILE_TYPES.get(f.type, str(f.type))}
        for f in files or []
    ]


def _tensor_dict(t) -> dict:
    out: dict = {"name": _text(t.name), "description": _text(t.description), "content": None}
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
    """A ModelMetadata flatbuffer (identifier M001) -> plain dict."""
    buf = bytes(buf)
    if len(buf) < 8 or not ms.ModelMetadata.ModelMetadataBufferHasIdentifier(buf, 0):
        raise MetadataError("the TFLITE_METADATA buffer is not a metadata flatbuffer (no 'M001' identifier)")
    meta = ms.ModelMetadataT.InitFromObj(ms.ModelMetadata.GetRootAs(buf, 0))
    return {
        "name": _text(meta.name),
        "description": _text(meta.description),
        "version": _text(meta.version),
        "author": _text(meta.author),
        "license": _text(meta.license),
        "min_parser_version": _text(meta.minParserVersion),
        "associated_files": _files(meta.associatedFiles),
        "subgraphs": [
            {
                "name": _text(sg.name),
                "inputs": [_tensor_dict(t) for t in sg.inputTensorMetadata or []],
                "outputs": [_tensor_dict(t) for t in sg.outputTensorMetadata or []],
                "associated_files": _files(sg.associatedFiles),
            }
            for sg in meta.subgraphMetadata or []
        ],
    }


# --------------------------------------------------------------------------------------------
# The TFLite model: read, add the metadata buffer, re-pack
# --------------------------------------------------------------------------------------------


def _check_tflite(buf: bytes, what: str = "model") -> None:
    if len(buf) < 8 or buf[4:8] != TFLITE_IDENTIFIER:
        raise ModelFileError(f"{what}: not a TFLite model (no 'TFL3' flatbuffer identifier at the start)")


def _unpack_model(buf: bytes, what: str):
    """ModelT of a .tflite, with every buffer's data inside the flatbuffer.

    TFLite converters may store buffer data outside the flatbuffer (Buffer.offset > 1 and
    Buffer.size: absolute position in the file); they do it for models over 2 GB. Such data is
    read back in (when the whole model fits a flatbuffer) so that re-packing keeps it.
    (ai_edge_litert's `flatbuffer_utils.read_model_from_bytearray` does this too, but it also
    renumbers empty buffers, which would change the model's buffer list.)
    """
    _check_tflite(buf, what)
    try:
        model = tfl.ModelT.InitFromObj(tfl.Model.GetRootAs(buf, 0))
    except Exception as exc:  # noqa: BLE001 - a corrupt flatbuffer raises anything from struct to IndexError
        raise ModelFileError(f"{what}: unreadable TFLite flatbuffer ({type(exc).__name__}: {exc})") from None
    external = [(i, b) for i, b in enumerate(model.buffers or []) if b.offset and b.offset > 1]
    if external:
        total = sum(int(b.size) for _, b in external) + sum(len(b.data) for b in model.buffers if b.data is not None)
        if total >= _MAX_FLATBUFFER - (1 << 20):
            raise MetadataError(
                f"{what}: {len(external)} weight buffers are stored outside the flatbuffer (a model "
                f"of {total / 2**30:.1f} GiB); re-packing it with metadata is not supported: flatbuffers "
                "cannot hold over 2 GB. Ship labels and normalisation beside the model instead."
            )
        for i, b in external:
            start, size = int(b.offset), int(b.size)
            if start + size > len(buf):
                raise ModelFileError(
                    f"{what}: buffer {i} lies outside the file (bytes {start}..{start + size} of "
                    f"{len(buf)}); the file is truncated"
                )
            b.data = np.frombuffer(buf, dtype=np.uint8, count=size, offset=start)
            b.offset, b.size = 0, 0
    return model


def _classifier_io(model, what: str):
    """(input tensor, output tensor) of a one-input, one-output model; else MetadataError."""
    if not model.subgraphs:
        raise ModelFileError(f"{what}: the model has no subgraph")
    sg = model.subgraphs[0]
    if len(sg.inputs) != 1 or len(sg.outputs) != 1:
        raise MetadataError(
            f"{what}: expected one image input and one output, found {len(sg.inputs)} inputs and "
            f"{len(sg.outputs)} outputs; metadata is written for image classifiers only"
        )
    return sg.tensors[int(sg.inputs[0])], sg.tensors[int(sg.outputs[0])]


def _zip_bytes(files: Sequence[tuple[str, bytes]], start: bytes) -> bytes:
    """`start` with a zip of `files` appended (offsets from the start of the whole file).

    Stored, not compressed: MediaPipe reads associated files in place and refuses a deflated
    archive ("Expected uncompressed zip archive.", checked with mediapipe 1.2.3).
    """
    out = io.BytesIO()
    out.write(start)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as zf:
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return out.getvalue()


def add_tflite_metadata(
    tflite: bytes,
    *,
    name: str,
    description: str,
    version: str,
    author: str,
    license: str,
    labels: Sequence[str],
    input_kind: str | None = None,
    output_kind: str = "probabilities",
    model_info: Mapping | None = None,
) -> bytes:
    """`tflite` (the bytes of an image classifier .tflite) with TFLite metadata and labels.

    input_kind: "float_raw_pixels" (float32 input, raw RGB 0..255, normalisation inside the
    graph: what edgetl exports), "uint8" (uint8 input, raw pixels) or "int8" (int8 input, the
    pixels quantized with the tensor's scale and zero point); None: taken from the input
    tensor's type. A kind that contradicts the tensor's type is an error.
    output_kind: "probabilities" (float32, or quantized uint8/int8, one score per label).
    labels: one per output class, in output order (written as labels.txt, one per line).
    model_info: optional edgetl `model_info.json` content (ModelInfo.to_json()), stored in
    the zip as model_info.json so that `edgetl.runtime` finds the input contract in the file.
    Metadata already in the file is replaced (the call is idempotent). The result is
    deterministic: the same arguments give the same bytes.
    """
    buf = bytes(tflite)
    model = _unpack_model(buf, "model")
    what = f"model {name!r}"
    inp, out = _classifier_io(model, what)

    # -- the model must be the classifier the metadata describes
    in_type = _TENSOR_TYPES.get(inp.type, str(inp.type))
    if input_kind is None:
        input_kind = _KIND_OF_TYPE.get(in_type, in_type)
    if input_kind not in INPUT_KINDS:
        raise MetadataError(
            f"{what}: input_kind {input_kind!r}: expected one of {', '.join(INPUT_KINDS)} "
            "(an image input of type float32, uint8 or int8)"
        )
    want_type = _INPUT_TYPES[input_kind]
    if in_type != want_type:
        raise MetadataError(
            f"{what}: input_kind {input_kind!r} needs a {want_type.lower()} input tensor but the model's "
            f"input is {in_type.lower()}"
        )
    quant = inp.quantization
    input_quantization = (
        (float(quant.scale[0]), int(quant.zeroPoint[0]))
        if quant is not None and quant.scale is not None and len(quant.scale) and quant.zeroPoint is not None
        else (1.0, 0)
    )
    shape = [int(x) for x in (inp.shape if inp.shape is not None else [])]
    if len(shape) != 4 or shape[3] != 3:
        raise MetadataError(f"{what}: input shape {shape} is not an NHWC RGB image [1, H, W, 3]")
    if output_kind not in OUTPUT_KINDS:
        raise MetadataError(f"{what}: output_kind {output_kind!r}: expected one of {', '.join(OUTPUT_KINDS)}")
    out_type = _TENSOR_TYPES.get(out.type, str(out.type))
    if out_type not in ("FLOAT32", "UINT8", "INT8"):
        raise MetadataError(f"{what}: output type {out_type.lower()} is not a score tensor (float32, uint8 or int8)")
    out_shape = [int(x) for x in (out.shape if out.shape is not None else [])]
    labels = [str(label) for label in labels]
    if not out_shape or out_shape[-1] != len(labels):
        raise MetadataError(f"{what}: {len(labels)} labels given but the output has shape {out_shape}")
    bad = [label for label in labels if not label.strip() or "\n" in label or "\r" in label]
    if bad:
        raise MetadataError(f"{what}: labels must be non-empty single lines; got {bad[:3]!r}")

    # -- the metadata flatbuffer and the files it names
    files: list[tuple[str, bytes]] = [(LABELS_FILE, "".join(f"{label}\n" for label in labels).encode("utf-8"))]
    model_files: list[tuple[str, str]] = []
    if model_info is not None:
        files.append((MODEL_INFO_FILE, (json.dumps(model_info, indent=2) + "\n").encode("utf-8")))
        model_files.append((MODEL_INFO_FILE, "edgetl model_info.json: labels and the input contract."))
    meta = _build_metadata(
        name=name,
        description=description,
        version=version,
        author=author,
        license=license,
        input_kind=input_kind,
        input_size=(shape[1], shape[2]),
        num_classes=len(labels),
        model_files=model_files,
        input_quantization=input_quantization,
    )

    # -- into the model: replace an earlier TFLITE_METADATA buffer, or add one at the end
    n_before = len(model.buffers)
    entries = [m for m in (model.metadata or []) if _name(m.name) == METADATA_NAME]
    if entries:
        index = int(entries[0].buffer)
        for extra in entries[1:]:
            model.metadata.remove(extra)
    else:
        index = len(model.buffers)
        model.buffers.append(None)
        model.metadata = (model.metadata or []) + [_table(tfl.MetadataT, name=METADATA_NAME, buffer=index)]
    originals = {i: b.data for i, b in enumerate(model.buffers) if i != index and b is not None}
    model.buffers[index] = _table(tfl.BufferT, data=np.frombuffer(meta, dtype=np.uint8))

    # Not the object API's own Pack: that would leave buffers unaligned (schema.fbs asks
    # `force_align: 16`; the generated code ignores it) and write every quantization vector
    # again, undoing the converter output's compaction (about 7% of an int8 file).
    packed = pack_tflite(model, len(buf) + len(meta))
    _check_repacked(packed, originals, len(model.buffers), index, meta, n_before)
    return _zip_bytes(files, packed)


def _name(value) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)


def _check_repacked(packed: bytes, originals: dict, n_buffers: int, index: int, meta: bytes, n_before: int) -> None:
    """Every weight buffer of the re-packed model holds exactly the bytes it held before."""
    if len(packed) > _MAX_FLATBUFFER:
        raise MetadataError(f"the model with metadata is {len(packed) / 2**30:.1f} GiB; flatbuffers stop at 2 GB")
    new = tfl.Model.GetRootAs(packed, 0)
    if new.BuffersLength() != n_buffers or n_buffers not in (n_before, n_before + 1):
        raise MetadataError(f"re-packing changed the number of buffers ({n_before} -> {new.BuffersLength()})")
    for i in range(n_buffers):
        b = new.Buffers(i)
        data = b.DataAsNumpy() if not b.DataIsNone() else None
        got = b"" if data is None or isinstance(data, int) else data.tobytes()
        if i == index:
            want = meta
        else:
            orig = originals.get(i)
            want = b"" if orig is None else np.asarray(orig, dtype=np.uint8).tobytes()
        if got != want or (b.Offset() > 1):
            raise MetadataError(f"re-packing the model changed buffer {i} ({len(want)} -> {len(got)} bytes)")


# --------------------------------------------------------------------------------------------
# Reading TFLite metadata back
# --------------------------------------------------------------------------------------------


def _read_bytes(path_or_bytes) -> tuple[bytes, str]:
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return bytes(path_or_bytes), "model"
    path = Path(path_or_bytes)
    try:
        return path.read_bytes(), str(path)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_tflite_metadata(path_or_bytes) -> dict:
    """What `add_tflite_metadata` wrote, as a dict; MetadataError when the file has none.

    Keys: name, description, version, author, license, min_parser_version, subgraphs (inputs
    and outputs: name, description, content, color_space, normalization, stats,
    associated_files), associated_files (model level), files (names in the appended zip),
    labels (the output's TENSOR_AXIS_LABELS file, split into lines), model_info (the stored
    model_info.json, or None), input_kind and input_size (from the model's input tensor).
    """
    buf, what = _read_bytes(path_or_bytes)
    _check_tflite(buf, what)
    try:
        model = tfl.Model.GetRootAs(buf, 0)
        entries = [model.Metadata(i) for i in range(model.MetadataLength())]
        entry = next((e for e in entries if _name(e.Name()) == METADATA_NAME), None)
        if entry is None:
            raise MetadataError(f"{what}: the model carries no TFLite metadata (no {METADATA_NAME} entry)")
        buffer = model.Buffers(entry.Buffer())
        if buffer.Offset() > 1:
            meta_bytes = buf[buffer.Offset() : buffer.Offset() + buffer.Size()]
        else:
            meta_bytes = buffer.DataAsNumpy().tobytes()
        sg = model.Subgraphs(0)
        inp = sg.Tensors(sg.Inputs(0))
        in_type = _TENSOR_TYPES.get(inp.Type(), str(inp.Type()))
        in_shape = [int(x) for x in inp.ShapeAsNumpy()]
    except MetadataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ModelFileError(f"{what}: unreadable TFLite flatbuffer ({type(exc).__name__}: {exc})") from None
    result = parse_metadata_buffer(meta_bytes)
    result["input_kind"] = _KIND_OF_TYPE.get(in_type, in_type.lower())
    result["input_size"] = in_shape[1:3] if len(in_shape) == 4 else None

    label_files = [
        f["name"]
        for sub in result["subgraphs"]
        for tensor in sub["outputs"]
        for f in tensor["associated_files"]
        if f["type"] == "TENSOR_AXIS_LABELS"
    ]
    # Only the entries used are read, into memory (never extracted: an entry name such as
    # "../../x" reaches no folder), and none that would inflate past the size limit.
    from edgetl.runtime.litert import MAX_ASSOCIATED_FILE_BYTES

    names: list[str] = []
    files: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(buf)) as zf:
            names = zf.namelist()
            for info in zf.infolist():
                if info.filename in (*label_files[:1], MODEL_INFO_FILE):
                    if info.file_size > MAX_ASSOCIATED_FILE_BYTES:
                        raise MetadataError(
                            f"{what}: associated file {info.filename} would inflate to {info.file_size} bytes "
                            f"(limit {MAX_ASSOCIATED_FILE_BYTES}); refusing to read it"
                        )
                    files[info.filename] = zf.read(info)
    except zipfile.BadZipFile:
        pass
    result["files"] = sorted(set(names))
    result["labels"] = None
    if label_files:
        if label_files[0] not in files:
            raise MetadataError(f"{what}: the metadata names {label_files[0]} but the file has no such associated file")
        text = files[label_files[0]].decode("utf-8")
        result["labels"] = [line.strip() for line in text.splitlines() if line.strip()]
    result["model_info"] = json.loads(files[MODEL_INFO_FILE].decode("utf-8")) if MODEL_INFO_FILE in files else None
    return result


def add_tflite_metadata_file(src: str | Path, dst: str | Path | None = None, **kwargs) -> Path:
    """`add_tflite_metadata` on a file, written atomically to `dst` (default: over `src`)."""
    from edgetl.compiler.atomic import atomic_write_bytes

    data, _ = _read_bytes(src)
    dst = Path(dst) if dst is not None else Path(src)
    atomic_write_bytes(dst, add_tflite_metadata(data, **kwargs))
    return dst


# --------------------------------------------------------------------------------------------
# ONNX metadata_props
# --------------------------------------------------------------------------------------------


def onnx_classifier_props(
    *,
    name: str,
    description: str,
    version: str,
    author: str,
    license: str,
    labels: Sequence[str],
    input_size: int,
    model_info: Mapping | None = None,
) -> dict[str, str]:
    """The facts of the TFLite metadata as ONNX metadata_props (all values strings).

    `labels` (JSON list) and `model_info` (JSON) are the keys `edgetl.runtime` reads.
    """
    props = {
        "name": name,
        "description": description,
        "version": version,
        "author": author,
        "license": license,
        "labels": json.dumps([str(x) for x in labels], ensure_ascii=False),
        "input_size": json.dumps([int(input_size), int(input_size)]),
        "input_layout": "NHWC",
        "input_color_space": "RGB",
        "input_range": json.dumps([0, 255]),
        "normalization": "inside the model: feed raw RGB pixel values 0..255 (mean 0, std 1)",
        "output": "probabilities, one per label, in labels order",
    }
    if model_info is not None:
        props["model_info"] = json.dumps(model_info, ensure_ascii=False)
    return props


def add_onnx_metadata(onnx_path: str | Path, props: Mapping[str, object]) -> Path:
    """Set `props` as the ONNX model's metadata_props (other keys kept), atomically in place.

    Values that are not strings are stored as JSON. Weights kept in external data files stay
    there (the model is loaded without them and their references are written back unchanged).
    """
    import onnx

    from edgetl.compiler.atomic import atomic_path

    path = Path(onnx_path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise ModelFileError(f"ONNX model not found: {path}") from None
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError and friends
        raise ModelFileError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
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
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise ModelFileError(f"ONNX model not found: {path}") from None
    except Exception as exc:  # noqa: BLE001
        raise ModelFileError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    return {p.key: p.value for p in model.metadata_props}


__all__ = [
    "INPUT_KINDS",
    "METADATA_NAME",
    "MetadataError",
    "OUTPUT_KINDS",
    "add_onnx_metadata",
    "add_tflite_metadata",
    "add_tflite_metadata_file",
    "onnx_classifier_props",
    "parse_metadata_buffer",
    "read_onnx_metadata",
    "read_tflite_metadata",
]
