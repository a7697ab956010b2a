#!/usr/bin/env bash
# GPU check, a few minutes on a machine with NVIDIA GPU(s), run from the repository root:
#
#     bash benchmarks/gpu_check.sh            # PYTHON=/path/to/python to pick the interpreter
#
# 1. TensorFlow sees the GPU(s); `--strategy auto` and `mirrored` pick MirroredStrategy over
#    all of them (compiler/training/distribution.py); a few training steps of EfficientNet-Lite0 (random
#    weights, random pixels: no download) run under it, with images/s printed.
# 2. A tiny `edgetl compile --strategy mirrored` end to end on generated images, on the GPU(s).
# 3. `edgetl bench` of that build's model.onnx with ONNX Runtime's CUDA provider
#    (`--runtime onnxruntime-cuda`; needs the onnxruntime-gpu package instead of onnxruntime,
#    never both in one environment) beside the CPU provider.
#
# Nothing is downloaded: the interpreter must already have the project's dependencies
# (pip install -e ".[test]"); the script stops with a one-line reason where something is missing.
# Everything it writes goes under ${OUT:-/tmp/edgetl-gpu-check}.
set -euo pipefail

PY=${PYTHON:-python3}
WORK=${OUT:-/tmp/edgetl-gpu-check}
mkdir -p "$WORK"
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONPATH="$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"

step() { echo; echo "== $*"; }

step "GPUs"
nvidia-smi -L || { echo "gpu_check: nvidia-smi failed: no NVIDIA driver here"; exit 1; }
"$PY" -c "import edgetl, tensorflow, onnxruntime" 2>/dev/null || {
    echo "gpu_check: $PY cannot import edgetl, tensorflow and onnxruntime: install the project first (pip install -e '.[test]')"; exit 1; }

step "MirroredStrategy on the GPU(s): strategy choice and training steps"
timeout 300 "$PY" - <<'EOF'
import time

import numpy as np

from edgetl._compat import keras, tf
from edgetl.compiler.training.distribution import make_strategy

gpus = tf.config.list_logical_devices("GPU")
print(f"TensorFlow {tf.__version__}, CUDA build: {tf.test.is_built_with_cuda()}, GPUs: {[g.name for g in gpus]}")
if not gpus:
    raise SystemExit("gpu_check: TensorFlow sees no GPU (CPU-only TensorFlow, or CUDA libraries missing)")
auto = make_strategy("auto")
print(f"--strategy auto   -> {type(auto).__name__}, {auto.num_replicas_in_sync} replica(s)")
strategy = make_strategy("mirrored")
print(f"--strategy mirrored -> {type(strategy).__name__}, {strategy.num_replicas_in_sync} replica(s)")
assert strategy.num_replicas_in_sync == len(gpus), "mirrored must use every GPU"
if len(gpus) > 1:
    assert isinstance(auto, tf.distribute.MirroredStrategy), "auto must mirror over several GPUs"

from edgetl.compiler.training.finetune import set_trainable_top, training_dataset
from edgetl.models import create_model, get_config

per_replica = 32
with strategy.scope():
    model = create_model("efficientnet_lite0", weights=None, num_classes=10)
set_trainable_top(model, get_config("efficientnet_lite0").unfreeze_from)
with strategy.scope():
    model.compile(keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
n = per_replica * strategy.num_replicas_in_sync * 8
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)
y = rng.integers(0, 10, n)
data = training_dataset(x, y, per_replica * strategy.num_replicas_in_sync, seed=0)
model.fit(data, epochs=1, verbose=0)  # trace, allocate
start = time.perf_counter()
history = model.fit(data, epochs=2, verbose=0)
seconds = time.perf_counter() - start
print(f"EfficientNet-Lite0 top fine-tuning on {strategy.num_replicas_in_sync} GPU(s): {2 * n / seconds:.0f} images/s "
      f"(global batch {per_replica * strategy.num_replicas_in_sync}); loss {history.history['loss'][-1]:.3f}")
EOF

step "edgetl compile --strategy mirrored (tiny model, generated images)"
timeout 300 "$PY" - "$WORK" <<'EOF'
import sys
from pathlib import Path

from conftest import write_color_dataset

work = Path(sys.argv[1])
write_color_dataset(work / "data", per_class=16)
EOF
rm -rf "$WORK/build"
timeout 600 "$PY" -m edgetl.cli compile "$WORK/data" --out "$WORK/build" --strategy mirrored \
    --teacher tiny_cnn --teacher-weights none --student none --finetune-epochs 2 --selection holdout \
    --quantize fp32 --no-robustness --no-cache
"$PY" -c "import json,sys; d=json.load(open(sys.argv[1]))['distribution']; print('report distribution:', d)" "$WORK/build/report.json"

step "edgetl bench: ONNX Runtime CUDA provider beside the CPU one"
"$PY" -c "import onnxruntime as ort; p=ort.get_available_providers(); print('ONNX Runtime', ort.__version__, p); \
import sys; sys.exit(0 if 'CUDAExecutionProvider' in p else 'gpu_check: no CUDAExecutionProvider: install onnxruntime-gpu (and uninstall onnxruntime) in this environment')"
timeout 300 "$PY" -m edgetl.cli bench "$WORK/build/model.onnx" --runtime onnxruntime,onnxruntime-cuda \
    --batch 8 --runs 50 --no-chart --out "$WORK/bench" --overwrite
echo
echo "gpu_check: done (results under $WORK)"
