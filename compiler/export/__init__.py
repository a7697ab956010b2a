"""The files a compile writes: TFLite and ONNX conversion, their checks against the source model,
embedded metadata and the hand-off for other runtimes."""
