"""Model cost figures that do not depend on the machine: parameters and multiply-accumulates."""

from __future__ import annotations

import numpy as np


def count_macs(model) -> int:
    """Multiply-accumulates of one image through the conv, depthwise-conv and dense layers.

    These layers hold all but a fraction of a percent of the arithmetic of the registry's
    models; element-wise ops (activations, batch norm, adds) are not counted. FLOPs ~ 2 x MACs.
    """
    from edgetl._compat import keras

    layers = keras.layers
    total = 0
    for layer in model.layers:
        if isinstance(layer, (layers.DepthwiseConv2D,)):
            _, h, w, c = layer.output_shape
            kh, kw = layer.kernel_size
            total += h * w * c * kh * kw
        elif isinstance(layer, layers.Conv2D):
            _, h, w, c_out = layer.output_shape
            kh, kw = layer.kernel_size
            c_in = layer.input_shape[-1] // layer.groups
            total += h * w * c_out * kh * kw * c_in
        elif isinstance(layer, layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return int(total)
