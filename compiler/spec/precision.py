"""bf16 mixed precision for training stages, float32 for everything that is exported or checked.

tf_keras' `mixed_bfloat16` policy keeps every variable in float32 and computes in bfloat16. On a
CPU with native bf16 (AVX512_BF16 or AMX, through oneDNN) that made a ResNet50 training step
about 1.9x faster here, and did nothing for EfficientNet-Lite (benchmarks/bf16_training.py
measures both), so it is a per-family choice (`ModelConfig.bf16_training`). Without native bf16
the policy is emulated and slower, so "auto" turns it on only where the CPU has it.

A model is built under the policy (layers take the global policy when they are created), trained,
and then rebuilt in float32 with the same weights (`float32_copy`): the teacher that is cached,
saved, distilled from and exported is an ordinary float32 model, so exports and their parity
checks never see bf16. Distilling from a bf16 copy of the teacher (`bf16_copy`) was measured and
not kept: benchmarks/bf16_training.py timed a ResNet50-to-Lite0 distillation epoch 2.04x faster
at batch 16 but 1.00x at the compile's batch 32, and in two pairs of whole flowers12 compiles
the distillation epochs took 42 s against 38-40 s in float32.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

MIXED_POLICY = "mixed_bfloat16"
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (Linux /proc/cpuinfo flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return any(flag in flags for flag in _BF16_CPU_FLAGS)
    return False


def use_bf16(setting: str, model_config) -> tuple[bool, str]:
    """(whether to train `model_config`'s model in bf16, why), for --mixed-precision `setting`."""
    if setting == "off":
        return False, "--mixed-precision off"
    if setting == "bf16":
        return True, "--mixed-precision bf16"
    if not getattr(model_config, "bf16_training", False):
        return False, f"{model_config.family} does not train faster in bf16 (measured), so float32"
    if not cpu_has_bf16():
        return False, "this CPU has no native bf16 (AVX512_BF16/AMX): emulated bf16 would be slower, so float32"
    return True, f"{model_config.family} trains faster in bf16 on this CPU (native bf16)"


@contextlib.contextmanager
def training_policy(bf16: bool):
    """Models created inside compute in bf16 (variables stay float32); the policy is restored after."""
    if not bf16:
        yield
        return
    from edgetl._compat import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(MIXED_POLICY)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def is_mixed(model) -> bool:
    return any(getattr(layer, "compute_dtype", "float32") == "bfloat16" for layer in model.layers)


def float32_copy(model, name: str, num_classes: int, input_size: int, dropout: float):
    """Registry model `name` built in float32 with `model`'s weights (same builder, same order)."""
    return _copy_under("float32", model, name, num_classes, input_size, dropout)


def bf16_copy(model, name: str, num_classes: int, input_size: int, dropout: float):
    """Registry model `name` built under the bf16 policy with `model`'s (float32) weights, for
    forward passes only and never exported: benchmarks/bf16_training.py times distillation from
    it (the compile does not use it; the module docstring says why)."""
    return _copy_under(MIXED_POLICY, model, name, num_classes, input_size, dropout)


def _copy_under(policy: str, model, name: str, num_classes: int, input_size: int, dropout: float):
    from edgetl._compat import keras
    from edgetl.models import create_model

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        copy = create_model(name, weights=None, num_classes=num_classes, dropout=dropout, input_size=input_size)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    copy.set_weights(model.get_weights())
    return copy
