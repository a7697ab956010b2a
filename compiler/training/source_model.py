"""Bring your own model: a classifier trained elsewhere, made into an edgetl model.

`edgetl compile DATA --model FILE` skips training and hands the user's Keras model (.keras,
.h5 or a SavedModel folder) to the same back half as a trained one: export, parity checks,
quantization with the accuracy gate, metadata, target check, app handoff and report.

Every edgetl model is one flat tf_keras graph on raw RGB pixels 0..255 (models/_registry.py):

    "image" -> "preprocess" (ImagePreprocessing) -> ... -> "logits" -> "probabilities" (Softmax)

A user's model has none of this: it takes pixels normalised by the user's own code, its layers
may sit in a nested backbone, and it may end in logits or in a softmax fused into its last
Dense. `wrap_source` rebuilds it in that form: the user's preprocessing (--preprocess preset,
or --mean/--std/--scale, --channel-order) becomes the in-graph "preprocess" layer, so every
exported file takes raw pixels like every other edgetl file; nested functional models are
inlined (tfmot's QAT refuses nested models); the last layer is split into "logits" and a
"probabilities" Softmax (QAT and pruning fine-tune on the logits); a Softmax is appended to a
model that outputs logits. The wrapped model is then checked against the user's model fed
the user's preprocessing in NumPy (`reference_probs`): that reference, not the wrapper, is
what every export is verified against.

An edgetl .keras carries its own contract (input size, preprocessing layer): it is used as it is.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from edgetl.errors import DataError, ModelFileError, SettingError
from edgetl.models import INPUT_NAME, LOGITS_LAYER, PREPROCESS_LAYER, PROBABILITIES_LAYER, ModelConfig

# Presets: model input = (x * scale - mean) / std on raw RGB 0..255 (after channel reordering,
# mean and std in the model's channel order). Those of keras.applications' preprocess_input.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRESETS = {
    "raw": dict(scale=1.0, mean=(0.0,) * 3, std=(1.0,) * 3, channel_order="RGB"),  # 0..255 as it is
    "tf": dict(scale=1 / 127.5, mean=(1.0,) * 3, std=(1.0,) * 3, channel_order="RGB"),  # -1..1
    "torch": dict(scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD, channel_order="RGB"),
    "caffe": dict(scale=1.0, mean=(103.939, 116.779, 123.68), std=(1.0,) * 3, channel_order="BGR"),
}
OUTPUTS = ("auto", "probabilities", "logits")
# The wrapped graph against the user's model fed NumPy preprocessing: the same float32 ops in
# another order (x * scale - mean vs (x - mean / scale) * scale), so it agrees to rounding.
WRAP_ATOL = 1e-4
_RESERVED = (INPUT_NAME, PREPROCESS_LAYER, LOGITS_LAYER, PROBABILITIES_LAYER)
_SOFTMAX_OPS = ("nn.softmax", "math.softmax")


@dataclasses.dataclass(frozen=True)
class InputContract:
    """How the user's model expects its input, resolved from the options or the model."""

    size: int
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str
    given_as: str  # "--preprocess tf", "--mean/--std/--scale", "the edgetl model's own preprocess layer"

    @property
    def pixel_mean(self) -> tuple[float, ...]:
        """mean and std on the 0..255 scale, as ImagePreprocessing takes them."""
        return tuple(m / self.scale for m in self.mean)

    @property
    def pixel_std(self) -> tuple[float, ...]:
        return tuple(s / self.scale for s in self.std)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """The user's preprocessing in NumPy, written as their own training code would: the
        independent reference the wrapped graph and every export are checked against."""
        x = np.asarray(pixels, dtype=np.float32)
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        return ((x * np.float32(self.scale) - np.float32(self.mean)) / np.float32(self.std)).astype(np.float32)

    def describe(self) -> str:
        def fmt(values):
            return f"{values[0]:g}" if len(set(values)) == 1 else "[" + ", ".join(f"{v:g}" for v in values) + "]"

        return f"{self.channel_order}, (x * {self.scale:.6g} - {fmt(self.mean)}) / {fmt(self.std)} (given as {self.given_as})"


@dataclasses.dataclass
class SourceModel:
    """The user's model as loaded, with its contract; `wrap_source` makes the edgetl model."""

    path: Path
    name: str
    model: object  # the tf_keras model as loaded
    contract: InputContract
    edgetl_model: bool  # already an edgetl graph (raw pixels in, preprocess layer): used as it is

    @property
    def outputs(self) -> int:
        return int(self.model.output_shape[-1])

    def config(self, params: int) -> ModelConfig:
        c = self.contract
        return ModelConfig(
            name=self.name, family="source", input_size=c.size, mean=c.pixel_mean, std=c.pixel_std,
            channel_order=c.channel_order, params=params, licence="the model's own",
            weights_source=str(self.path), unfreeze_from="", description=f"given with --model {self.path}",
        )


# --------------------------------------------------------------------------------------------
# Options -> contract
# --------------------------------------------------------------------------------------------


def parse_triple(value, name: str) -> tuple[float, float, float] | None:
    """--mean/--std: one number or three (a list, or text '0.485,0.456,0.406')."""
    if value is None:
        return None
    items = value.replace(" ", ",").split(",") if isinstance(value, str) else (list(value) if isinstance(value, (list, tuple)) else [value])
    try:
        numbers = [float(_fraction(v)) for v in items if str(v).strip() != ""]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) == 1:
        numbers *= 3
    if len(numbers) != 3 or not all(np.isfinite(numbers)):
        raise SettingError(f"--{name} {value!r} must be one number or three, comma-separated (setting {name})")
    return tuple(numbers)


def _fraction(value):
    """'1/255' -> 1/255; numbers as they are."""
    if isinstance(value, str) and "/" in value:
        top, bottom = value.split("/", 1)
        return float(top) / float(bottom)
    return float(value)


def parse_scale(value) -> float | None:
    if value is None:
        return None
    try:
        scale = float(_fraction(value))
    except (TypeError, ValueError, ZeroDivisionError):
        scale = float("nan")
    if not np.isfinite(scale) or scale <= 0:
        raise SettingError(f"--scale {value!r} must be a positive number, e.g. 1/255 or 0.00392 (setting scale)")
    return scale


def _user_contract(config, size: int) -> InputContract:
    mean, std, scale = parse_triple(config.mean, "mean"), parse_triple(config.std, "std"), parse_scale(config.scale)
    if config.preprocess is not None and (mean or std or scale):
        raise SettingError(f"--preprocess {config.preprocess} already sets mean, std and scale: give either it or --mean/--std/--scale")
    if config.preprocess is None and not (mean or std or scale):
        raise SettingError(
            f"--model {config.model}: say how it expects its input: --preprocess raw|tf|torch|caffe "
            "(0..255, -1..1, ImageNet mean/std on 0..1, Caffe BGR mean), or --mean/--std (and --scale)"
        )
    if config.preprocess is not None:
        preset = PRESETS[config.preprocess]
        order = config.channel_order or preset["channel_order"]
        return InputContract(size, preset["scale"], preset["mean"], preset["std"], order, f"--preprocess {config.preprocess}")
    if std is not None and min(abs(s) for s in std) == 0:
        raise SettingError(f"--std {config.std!r} must not hold 0 (setting std)")
    given = "/".join(f"--{n}" for n, v in (("mean", mean), ("std", std), ("scale", scale)) if v is not None)
    return InputContract(size, scale or 1.0, mean or (0.0,) * 3, std or (1.0,) * 3, config.channel_order or "RGB", given)


def _input_size(model, path: Path, asked: int | None) -> int:
    shape = model.input_shape
    if isinstance(shape, list):
        raise ModelFileError(f"{path}: the model has {len(shape)} inputs; edgetl compiles image classifiers with one image input")
    if len(shape) != 4:
        raise ModelFileError(f"{path}: the model's input has shape {tuple(shape)}; edgetl needs images, batch x height x width x 3")
    _, h, w, c = shape
    if c != 3:
        hint = " (channels first? edgetl needs channels last, NHWC)" if h == 3 else ""
        raise ModelFileError(f"{path}: the model takes {c} channels{hint}; edgetl compiles RGB image classifiers (3 channels last)")
    if h is not None and w is not None and h != w:
        raise ModelFileError(f"{path}: the model takes {h}x{w} images; edgetl compiles square inputs only")
    fixed = h or w
    if fixed and asked and asked != fixed:
        raise SettingError(f"--input-size {asked} does not match the model, which takes {fixed}x{fixed} images; drop --input-size")
    if not (fixed or asked):
        raise SettingError(f"--model {path}: its input size is not fixed (None x None); give it with --input-size, e.g. --input-size 224")
    return int(fixed or asked)


def is_edgetl_model(model) -> bool:
    from edgetl.runtime.keras_layers import ImagePreprocessing

    names = {layer.name: layer for layer in model.layers}
    return isinstance(names.get(PREPROCESS_LAYER), ImagePreprocessing) and PROBABILITIES_LAYER in names


def load_source(config, trust_model: bool = False) -> SourceModel:
    """Load --model (refusing code in it unless trusted) and resolve how it takes its input."""
    from edgetl.runtime.keras_model import load_keras_model

    path = Path(config.model)
    model = load_keras_model(path, trust_model=trust_model)
    if not hasattr(model, "layers") or not hasattr(model, "output_shape"):
        raise ModelFileError(f"{path}: not a Keras model (a plain TensorFlow SavedModel has no layers to compile); save it with tf_keras")
    if isinstance(model.output_shape, list):
        raise ModelFileError(f"{path}: the model has {len(model.output_shape)} outputs; edgetl compiles classifiers with one output")
    if len(model.output_shape) != 2:
        raise ModelFileError(f"{path}: the model's output has shape {tuple(model.output_shape)}; edgetl needs one score per class (batch x classes)")
    size = _input_size(model, path, config.input_size)
    name = path.stem if path.is_file() else path.name
    if is_edgetl_model(model):
        given = [f"--{n.replace('_', '-')}" for n in ("preprocess", "mean", "std", "scale", "channel_order") if getattr(config, n) is not None]
        if given:
            raise SettingError(f"{path} is an edgetl model: it carries its own preprocessing layer; drop {', '.join(given)}")
        layer = model.get_layer(PREPROCESS_LAYER)
        contract = InputContract(size, 1.0, layer.mean, layer.std, layer.channel_order, "the edgetl model's own preprocess layer")
        return SourceModel(path, name, model, contract, edgetl_model=True)
    return SourceModel(path, name, model, _user_contract(config, size), edgetl_model=False)


# --------------------------------------------------------------------------------------------
# Classes
# --------------------------------------------------------------------------------------------


def read_labels(path: Path) -> list[str]:
    """A labels file: one class name per line, in the model's output order."""
    try:
        names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingError(f"--labels {path}: cannot read it ({exc.__class__.__name__}); give a text file, one class name per line") from None
    names = [n for n in names if n]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if len(names) < 2 or repeated:
        problem = f"names {', '.join(repeated[:3])} more than once" if repeated else f"{len(names)} class name(s)"
        raise SettingError(f"--labels {path} holds {problem}; give one class name per line, in the model's output order")
    return names


def match_classes(dataset, source: SourceModel, labels: Path | None):
    """DATA's classes in the model's output order, and one clear error when they cannot match.

    Without --labels the classes are DATA's folder names, sorted (as edgetl trains them); with
    it, the file gives the order and every class folder must be one of its names.
    """
    classes = list(dataset.classes)
    if labels is not None:
        names = read_labels(labels)
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise DataError(f"class folder(s) {', '.join(unknown[:5])} of {dataset.root} are not in --labels {labels}; name the folders as the labels file does")
        index = {name: i for i, name in enumerate(names)}
        remap = lambda samples: [dataclasses.replace(s, label=index[classes[s.label]]) for s in samples]  # noqa: E731
        splits = {split: remap(samples) for split, samples in dataset.splits.items()}
        missing = [n for n in names if n not in classes]
        warnings = list(dataset.warnings) + ([f"class(es) {', '.join(missing[:5])} of --labels have no images in DATA: they are never scored"] if missing else [])
        dataset = dataclasses.replace(dataset, classes=names, splits=splits, warnings=warnings)
        classes = names
    if source.outputs != len(classes):
        where = f"--labels {labels}" if labels is not None else f"{dataset.root} ({', '.join(classes[:6])}{', ...' if len(classes) > 6 else ''})"
        hint = "" if labels is not None else "; if it was trained on other classes or more of them, give its class names in output order with --labels FILE"
        raise DataError(f"--model {source.path} outputs {source.outputs} scores but {where} has {len(classes)} classes{hint}")
    return dataset


def evaluation_dataset(dataset):
    """Which images do what, when nothing is trained here.

    DATA is scanned without carving (selection "cv": a given val/ joins train/). With a test/
    folder the user kept apart, it scores the files and the rest calibrates int8 and feeds the
    gate. Without one, every image does all three: edgetl trained nothing on them, so carving a
    split would only throw images away (the report says the user's model may have seen them).
    """
    splits = dict(dataset.splits)
    if not splits.get("test"):
        splits["test"] = splits["train"]  # the same list: ImageCache decodes it once
    splits["val"] = []
    return dataclasses.replace(dataset, splits=splits, selection="none")


# --------------------------------------------------------------------------------------------
# The wrapped, flat model
# --------------------------------------------------------------------------------------------


def reference_probs(source: SourceModel, pixels: np.ndarray, softmax: bool, batch_size: int = 32) -> np.ndarray:
    """The user's model fed the user's preprocessing (NumPy), as probabilities."""
    from edgetl._compat import tf

    outs = []
    for i in range(0, len(pixels), batch_size):
        x = pixels[i:i + batch_size]
        x = x.astype(np.float32) if source.edgetl_model else source.contract.apply(x)
        outs.append(np.asarray(source.model(x, training=False), dtype=np.float32))
    scores = np.concatenate(outs) if outs else np.zeros((0, source.outputs), np.float32)
    return tf.nn.softmax(scores, axis=-1).numpy() if softmax else scores


def looks_like_probabilities(scores: np.ndarray) -> bool:
    """Rows of non-negative numbers that sum to 1: probabilities; anything else: logits."""
    return bool(len(scores)) and float(scores.min()) >= -1e-6 and bool(np.all(np.abs(scores.sum(axis=1) - 1.0) <= 1e-3))


def _last_layer(model):
    """The layer that makes the model's output, looking inside nested functional models."""
    layer = model.layers[-1] if not model.outputs else model.outputs[0]._keras_history.layer
    while _is_graph(layer):
        layer = layer.outputs[0]._keras_history.layer
    return layer


def _is_graph(layer) -> bool:
    return getattr(layer, "_is_graph_network", False) and hasattr(layer, "_nodes_by_depth")


def _softmax_kind(layer) -> str | None:
    """'layer': the layer is a softmax (Softmax, Activation('softmax'), tf.nn.softmax);
    'fused': it computes and then applies a softmax activation (Dense(..., activation='softmax'));
    None: neither."""
    from edgetl._compat import keras

    config = layer.get_config()
    if isinstance(layer, keras.layers.Softmax):
        return "layer"
    if isinstance(layer, keras.layers.Activation) and config.get("activation") == "softmax":
        return "layer"
    if type(layer).__name__ in ("TFOpLambda", "SlicingOpLambda") and config.get("function") in _SOFTMAX_OPS:
        return "layer"
    if config.get("activation") == "softmax":
        return "fused"
    return None


@dataclasses.dataclass
class Wrapped:
    model: object  # the flat edgetl graph (tf_keras)
    flat: bool
    output: str  # "probabilities" (softmax in the model) or "logits" (softmax appended)
    logits_from: str | None  # the user's layer that became "logits" (None: none could be found)
    kept_nested: list[str]  # layers left as they are (subclassed models): why QAT is not available
    last_layer: str = ""  # the user's layer that makes the output

    @property
    def fine_tunable(self) -> str | None:
        """Why QAT and pruning cannot run on it (None: they can)."""
        if self.kept_nested:
            return f"layer {self.kept_nested[0]!r} is a model of its own that edgetl cannot take apart (tfmot needs one flat graph)"
        if self.logits_from is None:
            return (f"its last layer {self.last_layer!r} makes probabilities without a softmax edgetl can split off, so there are "
                    "no logits for QAT or pruning to fine-tune on")
        return None


def wrap_source(source: SourceModel, sample: np.ndarray, model_output: str = "auto") -> Wrapped:
    """The user's model as a flat edgetl graph on raw pixels (see the module docstring).

    sample: raw pixels (uint8 NHWC at the input size), to tell logits from probabilities
    when the model's last layer does not say (model_output "auto")."""
    from edgetl._compat import keras
    from edgetl.runtime.keras_layers import ImagePreprocessing

    if source.edgetl_model:
        return Wrapped(source.model, True, "probabilities", LOGITS_LAYER if _has_layer(source.model, LOGITS_LAYER) else None, [])
    c = source.contract
    last = _last_layer(source.model)
    kind = _softmax_kind(last)
    if kind is None:
        if model_output == "auto":
            output = "probabilities" if looks_like_probabilities(reference_probs(source, sample, softmax=False)) else "logits"
        else:
            output = model_output
    else:
        if model_output == "logits":
            raise SettingError(f"--model-output logits, but {source.path} ends in a softmax ({last.name!r}): its outputs are probabilities; drop --model-output")
        output = "probabilities"

    inputs = keras.Input((c.size, c.size, 3), dtype="float32", name=INPUT_NAME)
    x = ImagePreprocessing(c.pixel_mean, c.pixel_std, c.channel_order, name=PREPROCESS_LAYER)(inputs)
    builder = _Inliner(last, kind, output)
    outputs = builder.inline(source.model, [x])[0]
    if kind == "layer":
        outputs = builder.softmax_input  # the user's softmax is replaced by ours, below
    if output == "logits" or kind is not None:
        outputs = keras.layers.Softmax(name=PROBABILITIES_LAYER, dtype="float32")(outputs)
    else:  # probabilities from a layer edgetl cannot split: no logits
        outputs = keras.layers.Activation("linear", name=PROBABILITIES_LAYER, dtype="float32")(outputs)
    model = keras.Model(inputs, outputs, name=_model_name(source.name))
    return Wrapped(model, not builder.kept, output, builder.logits_from, builder.kept, last.name)


def _has_layer(model, name: str) -> bool:
    return any(layer.name == name for layer in model.layers)


def _model_name(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in name)
    return cleaned if cleaned and cleaned[0].isalpha() else f"model_{cleaned}"


class _Inliner:
    """Rebuilds a functional model's layers, nested functional models inlined, as one graph.

    Each layer is copied (from its config, then its weights) so nothing done to the wrapped
    model reaches the user's; a layer called more than once is copied once. The layer that
    makes the logits is named "logits"; a softmax activation fused into it is split off, and a
    softmax layer at the end is left out (the caller appends edgetl's "probabilities")."""

    def __init__(self, last, kind: str | None, output: str):
        self.last, self.kind = last, kind
        # The user's layer whose output is the logits: the last layer itself (a softmax fused
        # into it, or no softmax at all), or the one feeding a softmax layer.
        self.logits_source = None
        if kind == "fused" or (kind is None and output == "logits"):
            self.logits_source = last
        elif kind == "layer":
            producer = last._inbound_nodes[0].inbound_layers  # noqa: SLF001
            producer = producer[0] if isinstance(producer, list) else producer
            while _is_graph(producer):
                producer = producer.outputs[0]._keras_history.layer
            self.logits_source = producer
        self.copies: dict[int, object] = {}
        self.names: set[str] = set(_RESERVED)
        self.kept: list[str] = []
        self.softmax_input = None
        self.logits_layer = None

    @property
    def logits_from(self) -> str | None:
        return None if self.logits_layer is None else self.logits_source.name

    def inline(self, model, inputs: list, prefix: str = "") -> list:
        from edgetl._compat import keras, tf

        tensors = {id(ref): new for ref, new in zip(model.inputs, inputs)}
        for depth in sorted(model._nodes_by_depth, reverse=True):  # noqa: SLF001 - tf_keras' own graph order
            for node in model._nodes_by_depth[depth]:  # noqa: SLF001
                if node.is_input:
                    continue
                layer = node.layer
                args, kwargs = tf.nest.map_structure(
                    lambda t: tensors.get(id(t), t) if hasattr(t, "_keras_history") else t,
                    (node.call_args, node.call_kwargs),
                )
                if _is_graph(layer):
                    nested_inputs = [t for t in tf.nest.flatten((args, kwargs)) if hasattr(t, "_keras_history")]
                    out = self.inline(layer, nested_inputs, prefix=f"{prefix}{layer.name}_")
                    out = out[0] if len(out) == 1 else out
                else:
                    out = self._call(layer, args, kwargs, prefix)
                for ref, new in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(out)):
                    tensors[id(ref)] = new
        return [tensors[id(t)] for t in model.outputs]

    def _call(self, layer, args, kwargs, prefix: str):
        from edgetl._compat import keras

        if isinstance(layer, keras.Model):  # a subclassed model: kept whole, so not flat
            self.kept.append(layer.name)
            return layer(*args, **kwargs)
        if layer is self.last and self.kind == "layer":
            self.softmax_input = args[0] if args else next(iter(kwargs.values()))
            return self.softmax_input  # edgetl's Softmax replaces it
        copy = self.copies.get(id(layer))
        if copy is None:
            config = layer.get_config()
            if layer is self.last and self.kind == "fused":
                config["activation"] = "linear"
            is_logits = layer is self.logits_source and self.logits_layer is None
            config["name"] = LOGITS_LAYER if is_logits else self._unique(prefix + layer.name)
            copy = type(layer).from_config(config)
            self.copies[id(layer)] = copy
            if is_logits:
                self.logits_layer = copy
            out = copy(*args, **kwargs)
            copy.set_weights(layer.get_weights())
            return out
        return copy(*args, **kwargs)

    def _unique(self, name: str) -> str:
        base, n = name, 1
        while name in self.names:
            name, n = f"{base}_source" if n == 1 else f"{base}_source{n}", n + 1
        self.names.add(name)
        return name
