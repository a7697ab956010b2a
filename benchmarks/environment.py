"""What a benchmark figure depends on, so that it can be compared later: CPU, cores, versions."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata

from edgetl.runtime.measure import usable_cores  # noqa: F401  (part of this module's interface)

# CPU features that decide which kernels XNNPACK / ONNX Runtime / oneDNN can use.
_X86_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
)
_ARM_FLAGS = ("neon", "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2", "sme")

PACKAGES = (
    "edgetl", "numpy", "ai-edge-litert", "onnxruntime", "onnxruntime-gpu", "onnx",
    "tensorflow", "tf-keras", "pillow", "tensorrt", "tensorrt-cu12",
)


def _cpuinfo() -> tuple[str | None, list[str]]:
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware", "cpu model") and model is None:
                    model = value.strip()
                elif key in ("flags", "features"):
                    flags.update(value.split())
    except OSError:
        pass
    if model is None and sys.platform == "darwin":
        try:
            model = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
            ).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
    wanted = _X86_FLAGS + _ARM_FLAGS
    return model or platform.processor() or platform.machine(), [f for f in wanted if f in flags]


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _gpus() -> list[dict]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        text = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "driver": parts[1], "memory": parts[2]})
    return gpus


def collect(pinned: list[int] | None = None) -> dict:
    """The environment block of bench.json."""
    model, flags = _cpuinfo()
    versions = _versions()
    env = {
        "cpu": {
            "model": model,
            "arch": platform.machine(),
            "flags": flags,
            "logical_cores": os.cpu_count(),
            "usable_cores": usable_cores(),
            "pinned_cores": pinned,
        },
        "memory_gb": _memory_gb(),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": versions,
        "gpus": _gpus(),
        "warnings": [],
    }
    try:
        env["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        env["load_average"] = None
    busy = env["load_average"] and env["load_average"][0] >= max(1.0, 0.5 * len(env["cpu"]["usable_cores"]))
    if busy:
        env["warnings"].append(
            f"load average {env['load_average'][0]:g} on {len(env['cpu']['usable_cores'])} cores when the "
            "benchmark started: other processes compete for the CPU, so latencies are inflated"
        )
    try:
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        env["onnxruntime_providers"] = []
    if "onnxruntime" in versions and "onnxruntime-gpu" in versions:
        env["warnings"].append(
            "onnxruntime and onnxruntime-gpu are both installed and overwrite each other: "
            "`pip uninstall onnxruntime onnxruntime-gpu`, then install only onnxruntime-gpu"
        )
    return env


def one_line(env: dict) -> str:
    cpu = env["cpu"]
    cores = f"{len(cpu['pinned_cores'])} pinned of {cpu['logical_cores']}" if cpu.get("pinned_cores") else f"{cpu['logical_cores']}"
    flags = "/".join(f for f in cpu["flags"] if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "sve"))
    pk = env["packages"]
    ort = pk.get("onnxruntime-gpu") and f"onnxruntime-gpu {pk['onnxruntime-gpu']}" or f"onnxruntime {pk.get('onnxruntime', '-')}"
    gpu = f", GPU {env['gpus'][0]['name']}" if env.get("gpus") else ""
    return (f"{cpu['model']} ({cores} cores; {flags or 'no SIMD flags read'}){gpu}; {env['python']}; "
            f"ai-edge-litert {pk.get('ai-edge-litert', '-')}, {ort}")
