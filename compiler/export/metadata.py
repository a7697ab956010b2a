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

Neither mediapipe nor tflite-support is needed at run time (mediapipe is a 43 MB wheel plus
OpenCV, and tflite-support pins protobuf<4, which TensorFlow 2.21 cannot share): the model is
read and re-packed with TensorFlow's own TFLite schema bindings (object API), and the small
metadata flatbuffer is written with plain `flatbuffers.Builder` calls below. Slot numbers and
union codes are those of `metadata_schema.fbs` as compiled in
`mediapipe/tasks/metadata/metadata_schema_py_generated.py` (mediapipe 1.2.3); the tests check
what we write against that generated reader and against MediaPipe's `ImageClassifier`.

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
from flatbuffers import number_types as N
from flatbuffers.table import Table

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


class MetadataError(EdgetlError):
    """Metadata that cannot be written to (or read from) the given model."""


# --------------------------------------------------------------------------------------------
# metadata_schema.fbs: slot numbers (field index in declaration order; a union field takes two
# slots, its type first) and enum/union codes. Vtable byte offset of slot s is 4 + 2 * s.
# --------------------------------------------------------------------------------------------


class _ModelMetadata:  # table ModelMetadata (the root)
    SLOTS = 8
    NAME = 0  # name: string
    DESCRIPTION = 1  # description: string
    VERSION = 2  # version: string
    SUBGRAPH_METADATA = 3  # subgraph_metadata: [SubGraphMetadata]
    AUTHOR = 4  # author: string
    LICENSE = 5  # license: string
    ASSOCIATED_FILES = 6  # associated_files: [AssociatedFile]
    MIN_PARSER_VERSION = 7  # min_parser_version: string


class _SubGraphMetadata:  # table SubGraphMetadata (10 fields; we write the first five)
    SLOTS = 10
    NAME = 0  # name: string
    DESCRIPTION = 1  # description: string
    INPUT_TENSOR_METADATA = 2  # input_tensor_metadata: [TensorMetadata]
    OUTPUT_TENSOR_METADATA = 3  # output_tensor_metadata: [TensorMetadata]
    ASSOCIATED_FILES = 4  # associated_files: [AssociatedFile]


class _TensorMetadata:  # table TensorMetadata
    SLOTS = 7
    NAME = 0  # name: string
    DESCRIPTION = 1  # description: string
    DIMENSION_NAMES = 2  # dimension_names: [string] (not written)
    CONTENT = 3  # content: Content
    PROCESS_UNITS = 4  # process_units: [ProcessUnit]
    STATS = 5  # stats: Stats
    ASSOCIATED_FILES = 6  # associated_files: [AssociatedFile]


class _Content:  # table Content
    SLOTS = 3
    PROPERTIES_TYPE = 0  # content_properties_type: ubyte (union tag of content_properties)
    PROPERTIES = 1  # content_properties: ContentProperties (union)
    RANGE = 2  # range: ValueRange (not written)


class _ContentProperties:  # union ContentProperties: type codes
    NONE = 0
    FEATURE_PROPERTIES = 1  # FeatureProperties (no fields)
    IMAGE_PROPERTIES = 2  # ImageProperties
    BOUNDING_BOX_PROPERTIES = 3
    AUDIO_PROPERTIES = 4


class _ImageProperties:  # table ImageProperties
    SLOTS = 2
    COLOR_SPACE = 0  # color_space: ColorSpaceType (byte)
    DEFAULT_SIZE = 1  # default_size: ImageSize (not written)


class _ColorSpaceType:  # enum ColorSpaceType : byte
    UNKNOWN = 0
    RGB = 1
    GRAYSCALE = 2


class _ProcessUnit:  # table ProcessUnit
    SLOTS = 2
    OPTIONS_TYPE = 0  # options_type: ubyte (union tag of options)
    OPTIONS = 1  # options: ProcessUnitOptions (union)


class _ProcessUnitOptions:  # union ProcessUnitOptions: type codes
    NONE = 0
    NORMALIZATION_OPTIONS = 1  # NormalizationOptions
    SCORE_CALIBRATION_OPTIONS = 2
    SCORE_THRESHOLDING_OPTIONS = 3


class _NormalizationOptions:  # table NormalizationOptions
    SLOTS = 2
    MEAN = 0  # mean: [float]
    STD = 1  # std: [float]


class _Stats:  # table Stats
    SLOTS = 2
    MAX = 0  # max: [float]
    MIN = 1  # min: [float]


class _AssociatedFile:  # table AssociatedFile
    SLOTS = 5
    NAME = 0  # name: string
    DESCRIPTION = 1  # description: string
    TYPE = 2  # type: AssociatedFileType (byte)
    LOCALE = 3  # locale: string (not written)
    VERSION = 4  # version: string (not written)


class _AssociatedFileType:  # enum AssociatedFileType : byte
    UNKNOWN = 0
    DESCRIPTIONS = 1
    TENSOR_AXIS_LABELS = 2
    TENSOR_VALUE_LABELS = 3
    TENSOR_AXIS_SCORE_CALIBRATION = 4
    VOCABULARY = 5


_FILE_TYPE_NAMES = {v: k for k, v in vars(_AssociatedFileType).items() if not k.startswith("_")}
_COLOR_SPACE_NAMES = {v: k for k, v in vars(_ColorSpaceType).items() if not k.startswith("_")}


# --------------------------------------------------------------------------------------------
# Writing the metadata flatbuffer
# --------------------------------------------------------------------------------------------


class _MetadataBuilder:
    """`flatbuffers.Builder` with one helper per kind of field we write.

    Flatbuffers are built back to front: every string, vector and sub-table a table refers to
    must be finished before that table is started, so each `*_table` method builds its children
    first and then the table.
    """

    def __init__(self):
        self.b = flatbuffers.Builder(1024)

    # -- primitives
    def string(self, text: str | None) -> int | None:
        return None if text is None else self.b.CreateString(text)

    def floats(self, values: Sequence[float]) -> int:
        return self.b.CreateNumpyVector(np.asarray(values, dtype="<f4"))

    def tables(self, offsets: Sequence[int]) -> int:
        """A vector of tables (uoffsets), in the given order."""
        self.b.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            self.b.PrependUOffsetTRelative(offset)
        return self.b.EndVector()

    def table(self, num_slots: int, offsets: Mapping[int, int | None] = (), bytes_: Mapping[int, int] = ()) -> int:
        """A table with uoffset fields `offsets` {slot: offset} and byte fields {slot: value}.

        None offsets are left out (absent field); byte fields equal to the default 0 are too.
        """
        self.b.StartObject(num_slots)
        for slot, offset in dict(offsets).items():
            if offset is not None:
                self.b.PrependUOffsetTRelativeSlot(slot, offset, 0)
        for slot, value in dict(bytes_).items():
            self.b.PrependUint8Slot(slot, value, 0)
        return self.b.EndObject()

    # -- tables of metadata_schema.fbs
    def associated_file(self, name: str, description: str, file_type: int) -> int:
        f = _AssociatedFile
        offsets = {f.NAME: self.string(name), f.DESCRIPTION: self.string(description)}
        return self.table(f.SLOTS, offsets, {f.TYPE: file_type})

    def stats(self, minimum: Sequence[float], maximum: Sequence[float]) -> int:
        s = _Stats
        return self.table(s.SLOTS, {s.MAX: self.floats(maximum), s.MIN: self.floats(minimum)})

    def normalization_unit(self, mean: Sequence[float], std: Sequence[float]) -> int:
        n, p = _NormalizationOptions, _ProcessUnit
        options = self.table(n.SLOTS, {n.MEAN: self.floats(mean), n.STD: self.floats(std)})
        return self.table(p.SLOTS, {p.OPTIONS: options}, {p.OPTIONS_TYPE: _ProcessUnitOptions.NORMALIZATION_OPTIONS})

    def image_content(self, color_space: int) -> int:
        i, c = _ImageProperties, _Content
        props = self.table(i.SLOTS, {}, {i.COLOR_SPACE: color_space})
        return self.table(c.SLOTS, {c.PROPERTIES: props}, {c.PROPERTIES_TYPE: _ContentProperties.IMAGE_PROPERTIES})

    def feature_content(self) -> int:
        c = _Content
        props = self.table(0)  # FeatureProperties has no fields
        return self.table(c.SLOTS, {c.PROPERTIES: props}, {c.PROPERTIES_TYPE: _ContentProperties.FEATURE_PROPERTIES})

    def tensor(
        self,
        name: str,
        description: str,
        content: int,
        process_units: Sequence[int] = (),
        stats: int | None = None,
        files: Sequence[int] = (),
    ) -> int:
        t = _TensorMetadata
        offsets = {
            t.NAME: self.string(name),
            t.DESCRIPTION: self.string(description),
            t.CONTENT: content,
            t.PROCESS_UNITS: self.tables(process_units) if process_units else None,
            t.STATS: stats,
            t.ASSOCIATED_FILES: self.tables(files) if files else None,
        }
        return self.table(t.SLOTS, offsets)

    def finish(self, root: int) -> bytes:
        self.b.Finish(root, METADATA_IDENTIFIER)
        return bytes(self.b.Output())


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
    mb = _MetadataBuilder()
    height, width = input_size
    if input_kind == "float_raw_pixels":
        input_description = (
            f"Input image: RGB, {height}x{width}, raw pixel values 0..255 as float32 (the model "
            "normalises them itself, hence normalisation mean 0, std 1)."
        )
        units = [mb.normalization_unit(mean=[0.0], std=[1.0])]
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
        units = [mb.normalization_unit(mean=[float(mean)], std=[float(std)])] if folded else []
    input_tensor = mb.tensor(
        "image",
        input_description,
        mb.image_content(_ColorSpaceType.RGB),
        process_units=units,
        stats=mb.stats(minimum=[0.0], maximum=[255.0]),
    )
    labels = mb.associated_file(
        LABELS_FILE, "Labels for categories that the model can recognize.", _AssociatedFileType.TENSOR_AXIS_LABELS
    )
    output_tensor = mb.tensor(
        "probability",
        f"Probabilities of the {num_classes} labels respectively.",
        mb.feature_content(),
        stats=mb.stats(minimum=[0.0], maximum=[1.0]),
        files=[labels],
    )
    s = _SubGraphMetadata
    subgraph = mb.table(
        s.SLOTS,
        {s.INPUT_TENSOR_METADATA: mb.tables([input_tensor]), s.OUTPUT_TENSOR_METADATA: mb.tables([output_tensor])},
    )
    extra = [mb.associated_file(fname, fdesc, _AssociatedFileType.UNKNOWN) for fname, fdesc in model_files]
    m = _ModelMetadata
    root = mb.table(
        m.SLOTS,
        {
            m.NAME: mb.string(name),
            m.DESCRIPTION: mb.string(description),
            m.VERSION: mb.string(version),
            m.SUBGRAPH_METADATA: mb.tables([subgraph]),
            m.AUTHOR: mb.string(author),
            m.LICENSE: mb.string(license),
            m.ASSOCIATED_FILES: mb.tables(extra) if extra else None,
            m.MIN_PARSER_VERSION: mb.string(MIN_PARSER_VERSION),
        },
    )
    return mb.finish(root)


# --------------------------------------------------------------------------------------------
# Reading the metadata flatbuffer back (a minimal reader over flatbuffers.table.Table)
# --------------------------------------------------------------------------------------------


class _Reader:
    """One table of a flatbuffer, read by slot number."""

    def __init__(self, buf, pos: int):
        self.t = Table(buf, pos)

    def _field(self, slot: int) -> int:
        return self.t.Offset(4 + 2 * slot)  # 0 when the field is absent

    def string(self, slot: int) -> str | None:
        o = self._field(slot)
        return self.t.String(o + self.t.Pos).decode("utf-8") if o else None

    def byte(self, slot: int) -> int:
        o = self._field(slot)
        return self.t.Get(N.Uint8Flags, o + self.t.Pos) if o else 0

    def table(self, slot: int) -> "_Reader | None":
        o = self._field(slot)
        return _Reader(self.t.Bytes, self.t.Indirect(o + self.t.Pos)) if o else None

    def union(self, slot: int) -> "_Reader | None":
        o = self._field(slot)
        if not o:
            return None
        sub = Table(bytearray(), 0)
        self.t.Union(sub, o)
        return _Reader(sub.Bytes, sub.Pos)

    def tables(self, slot: int) -> list["_Reader"]:
        o = self._field(slot)
        if not o:
            return []
        start = self.t.Vector(o)
        return [_Reader(self.t.Bytes, self.t.Indirect(start + 4 * i)) for i in range(self.t.VectorLen(o))]

    def floats(self, slot: int) -> list[float] | None:
        o = self._field(slot)
        if not o:
            return None
        return [float(x) for x in self.t.GetVectorAsNumpy(N.Float32Flags, o)]


def _read_files(r: _Reader, slot: int) -> list[dict]:
    f = _AssociatedFile
    return [
        {
            "name": a.string(f.NAME),
            "description": a.string(f.DESCRIPTION),
            "type": _FILE_TYPE_NAMES.get(a.byte(f.TYPE), str(a.byte(f.TYPE))),
        }
        for a in r.tables(slot)
    ]


def _read_tensor(r: _Reader) -> dict:
    t = _TensorMetadata
    out: dict = {"name": r.string(t.NAME), "description": r.string(t.DESCRIPTION), "content": None}
    content = r.table(t.CONTENT)
    if content is not None:
        kind = content.byte(_Content.PROPERTIES_TYPE)
        props = content.union(_Content.PROPERTIES)
        if kind == _ContentProperties.IMAGE_PROPERTIES and props is not None:
            space = props.byte(_ImageProperties.COLOR_SPACE)
            out["content"] = "image"
            out["color_space"] = _COLOR_SPACE_NAMES.get(space, str(space))
        elif kind == _ContentProperties.FEATURE_PROPERTIES:
            out["content"] = "feature"
        else:
            out["content"] = f"content type {kind}"
    out["normalization"] = None
    for unit in r.tables(t.PROCESS_UNITS):
        if unit.byte(_ProcessUnit.OPTIONS_TYPE) == _ProcessUnitOptions.NORMALIZATION_OPTIONS:
            opts = unit.union(_ProcessUnit.OPTIONS)
            out["normalization"] = {
                "mean": opts.floats(_NormalizationOptions.MEAN),
                "std": opts.floats(_NormalizationOptions.STD),
            }
    stats = r.table(t.STATS)
    out["stats"] = None if stats is None else {"min": stats.floats(_Stats.MIN), "max": stats.floats(_Stats.MAX)}
    out["associated_files"] = _read_files(r, t.ASSOCIATED_FILES)
    return out


def parse_metadata_buffer(buf: bytes) -> dict:
    """A ModelMetadata flatbuffer (identifier M001) -> plain dict."""
    buf = bytes(buf)
    if len(buf) < 8 or buf[4:8] != METADATA_IDENTIFIER:
        raise MetadataError("the TFLITE_METADATA buffer is not a metadata flatbuffer (no 'M001' identifier)")
    root = _Reader(buf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0))
    m, s = _ModelMetadata, _SubGraphMetadata
    return {
        "name": root.string(m.NAME),
        "description": root.string(m.DESCRIPTION),
        "version": root.string(m.VERSION),
        "author": root.string(m.AUTHOR),
        "license": root.string(m.LICENSE),
        "min_parser_version": root.string(m.MIN_PARSER_VERSION),
        "associated_files": _read_files(root, m.ASSOCIATED_FILES),
        "subgraphs": [
            {
                "name": sg.string(s.NAME),
                "inputs": [_read_tensor(t) for t in sg.tables(s.INPUT_TENSOR_METADATA)],
                "outputs": [_read_tensor(t) for t in sg.tables(s.OUTPUT_TENSOR_METADATA)],
                "associated_files": _read_files(sg, s.ASSOCIATED_FILES),
            }
            for sg in root.tables(m.SUBGRAPH_METADATA)
        ],
    }


# --------------------------------------------------------------------------------------------
# The TFLite model: read, add the metadata buffer, re-pack
# --------------------------------------------------------------------------------------------


def _schema():
    """TensorFlow's TFLite schema bindings (imported lazily: TensorFlow is slow to import)."""
    from edgetl import _compat  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)
    from tensorflow.lite.python import schema_py_generated

    return schema_py_generated


def _check_tflite(buf: bytes, what: str = "model") -> None:
    if len(buf) < 8 or buf[4:8] != TFLITE_IDENTIFIER:
        raise ModelFileError(f"{what}: not a TFLite model (no 'TFL3' flatbuffer identifier at the start)")


def _unpack_model(buf: bytes, what: str):
    """ModelT of a .tflite, with every buffer's data inside the flatbuffer.

    TFLite converters may store buffer data outside the flatbuffer (Buffer.offset > 1 and
    Buffer.size: absolute position in the file); they do it for models over 2 GB. Such data is
    read back in (when the whole model fits a flatbuffer) so that re-packing keeps it.
    """
    schema = _schema()
    _check_tflite(buf, what)
    try:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(buf, 0))
    except Exception as exc:  # noqa: BLE001 - a corrupt flatbuffer raises anything from struct to IndexError
        raise ModelFileError(f"{what}: unreadable TFLite flatbuffer ({type(exc).__name__}: {exc})") from None
    external = [(i, b) for i, b in enumerate(model.buffers or []) if b.offset and b.offset > 1]
    if external:
        total = sum(int(b.size) for _, b in external) + sum(
            len(b.data) for b in model.buffers if b.data is not None
        )
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


class _AlignedBuffer:
    """A `BufferT` stand-in whose data starts on a 16-byte boundary (as `force_align: 16` in
    schema.fbs asks; TensorFlow's generated object API ignores it). Used for our metadata."""

    def __init__(self, data: bytes):
        self.data = np.frombuffer(data, dtype=np.uint8)
        self.offset = 0
        self.size = 0

    def Pack(self, builder):  # noqa: N802 - the object API's method name
        schema = _schema()
        payload = self.data.tobytes()
        builder.StartVector(1, len(payload), 16)
        builder.head -= len(payload)
        builder.Bytes[builder.head : builder.head + len(payload)] = payload
        builder.vectorNumElems = len(payload)
        data = builder.EndVector()
        schema.BufferStart(builder)
        schema.BufferAddData(builder, data)
        return schema.BufferEnd(builder)


def _tensor_dtype_name(schema, code: int) -> str:
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    return names.get(code, str(code))


def _classifier_io(model, schema, what: str):
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
    schema = _schema()
    model = _unpack_model(buf, "model")
    what = f"model {name!r}"
    inp, out = _classifier_io(model, schema, what)

    # -- the model must be the classifier the metadata describes
    in_type = _tensor_dtype_name(schema, inp.type)
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
    out_type = _tensor_dtype_name(schema, out.type)
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
        entry = schema.MetadataT()
        entry.name = METADATA_NAME
        entry.buffer = index
        model.metadata = (model.metadata or []) + [entry]
    originals = {i: b.data for i, b in enumerate(model.buffers) if i != index and b is not None}
    model.buffers[index] = _AlignedBuffer(meta)

    builder = flatbuffers.Builder(max(1024, len(buf) + len(meta) + 4096))
    builder.Finish(model.Pack(builder), TFLITE_IDENTIFIER)
    packed = bytes(builder.Output())
    _check_repacked(packed, originals, len(model.buffers), index, meta, n_before)
    # The object API's Pack writes every quantization vector again, undoing the converter
    # output's compaction (about 7% of an int8 file); share identical vectors once more.
    from edgetl.compiler.compression.quantize import compact_tflite

    packed = compact_tflite(packed)
    _check_repacked(packed, originals, len(model.buffers), index, meta, n_before)
    return _zip_bytes(files, packed)


def _name(value) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)


def _check_repacked(packed: bytes, originals: dict, n_buffers: int, index: int, meta: bytes, n_before: int) -> None:
    """Every weight buffer of the re-packed model holds exactly the bytes it held before."""
    schema = _schema()
    if len(packed) > _MAX_FLATBUFFER:
        raise MetadataError(f"the model with metadata is {len(packed) / 2**30:.1f} GiB; flatbuffers stop at 2 GB")
    new = schema.Model.GetRootAsModel(packed, 0)
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
    schema = _schema()
    _check_tflite(buf, what)
    try:
        model = schema.Model.GetRootAsModel(buf, 0)
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
        in_type = _tensor_dtype_name(schema, inp.Type())
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
    from edgetl.atomic import atomic_write_bytes

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

    from edgetl.atomic import atomic_path

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
