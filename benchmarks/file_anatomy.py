"""Where the bytes of a .tflite file go, and how well each part gzips.

    python -m edgetl.benchmarks.file_anatomy model.tflite [other.tflite ...]

Prints, per kind of constant tensor (1x1 and kxk convolution filters, depthwise filters,
fully-connected weights, biases), its bytes, its share of zeros, its gzip size and ratio, and
the most distinct non-zero values in one output channel; then the whole file. This is how to
see why pruning alone gzips poorly (the surviving int8 codes are nearly uniform) and what
clustering changes (few codes per channel).
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np


def _gzip(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9))


def _kind(op_name: str, filters: np.ndarray) -> str:
    if op_name == "CONV_2D":
        return "conv 1x1 filters" if filters.shape[1:3] == (1, 1) else "conv kxk filters"
    return {"DEPTHWISE_CONV_2D": "depthwise filters", "FULLY_CONNECTED": "dense weights"}[op_name]


def anatomy(path: Path) -> dict[str, dict]:
    """{kind: {bytes, zeros, gzip, codes}} for the weight and bias tensors of a TFLite file."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    parts: dict[str, list[np.ndarray]] = {}
    seen: set[int] = set()
    for op in interpreter._get_ops_details():  # noqa: SLF001  (the only per-op view LiteRT offers)
        if op["op_name"] not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        inputs = [i for i in op["inputs"] if i >= 0]
        for role, index in zip(("weights", "bias"), inputs[1:3]):
            if index in seen:
                continue
            try:
                tensor = interpreter.get_tensor(index)
            except ValueError:  # computed at run time, not stored in the file
                continue
            seen.add(index)
            kind = "biases" if role == "bias" else _kind(op["op_name"], tensor)
            parts.setdefault(kind, []).append(tensor)
    out = {}
    for kind, tensors in parts.items():
        data = b"".join(t.tobytes() for t in tensors)
        size = sum(t.size for t in tensors)
        # one bias per output channel: a count of distinct values per channel means nothing there
        codes = None if kind == "biases" else max(
            len(np.unique(row[row != 0])) for t in tensors for row in t.reshape(t.shape[0], -1)
        )
        out[kind] = {
            "bytes": len(data),
            "zeros": sum(int(np.count_nonzero(t == 0)) for t in tensors) / size,
            "gzip": _gzip(data),
            "codes": codes,
        }
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    for path in args.files:
        if path.suffix != ".tflite" or not path.is_file():
            raise SystemExit(f"error: {path}: not a .tflite file")
    for path in args.files:
        data = path.read_bytes()
        print(f"{path}: {len(data) / 1e6:.2f} MB, gzip {_gzip(data) / 1e6:.2f} MB ({len(data) / _gzip(data):.2f}x)")
        print(f"  {'tensors':<18} {'MB':>7} {'zeros':>6} {'gzip MB':>8} {'ratio':>6} {'codes/channel':>14}")
        for kind, p in sorted(anatomy(path).items(), key=lambda kv: -kv[1]["bytes"]):
            print(
                f"  {kind:<18} {p['bytes'] / 1e6:7.3f} {p['zeros']:6.1%} {p['gzip'] / 1e6:8.3f} "
                f"{p['bytes'] / p['gzip']:6.2f} {'-' if p['codes'] is None else p['codes']:>14}"
            )


if __name__ == "__main__":
    main()
