"""The in-graph preprocessing layer: part of the deployment contract.

Every model edgetl builds starts with it (raw RGB 0..255 in, the backbone's scaling inside the
graph), and loading a saved Keras model needs it registered, so it lives with the runtime;
models/ and compiler/ import it from here.
"""

from __future__ import annotations

from edgetl._compat import keras, tf


@keras.utils.register_keras_serializable(package="edgetl")
class ImagePreprocessing(keras.layers.Layer):
    """Raw RGB 0..255 -> what the backbone expects: channel order, then (x - mean) / std.

    Weightless (constants only), so it does not disturb loading weights by layer order, and it
    converts to plain Sub/Mul ops in TFLite and ONNX.
    """

    def __init__(self, mean, std, channel_order="RGB", **kwargs):
        super().__init__(**kwargs)
        if channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be RGB or BGR, got {channel_order!r}")
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.channel_order = channel_order

    def call(self, inputs):
        x = tf.cast(inputs, self.compute_dtype)
        if self.channel_order == "BGR":
            x = tf.reverse(x, axis=[-1])
        mean = tf.constant(self.mean, dtype=x.dtype)
        inv_std = tf.constant([1.0 / s for s in self.std], dtype=x.dtype)
        return (x - mean) * inv_std

    def get_config(self):
        config = super().get_config()
        config.update(mean=list(self.mean), std=list(self.std), channel_order=self.channel_order)
        return config
