"""`model_info.json`: what an app (and `edgetl predict`) needs to feed a compiled model.

The compiler writes it next to the exported files; runtimes read it so that a model edgetl made
needs nothing else. For a model edgetl did not make, `ModelInfo.assumed` says what was guessed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

INFO_FILE = "model_info.json"
LABELS_FILE = "labels.txt"


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    labels: tuple[str, ...]
    input_size: int
    resize_policy: str
    model: str = "unknown"
    # Input contract shared by every file edgetl exports: NHWC RGB pixels 0..255; normalisation
    # is inside the graph. Quantized files may take uint8/int8 (see each file's own I/O dtypes).
    input_range: tuple[float, float] = (0.0, 255.0)
    channel_order: str = "RGB"
    # What had to be guessed because the model did not come with edgetl's files.
    assumed: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {
            "format_version": 1,
            "model": self.model,
            "labels": list(self.labels),
            "input": {
                "name": "image",
                "layout": "NHWC",
                "size": [self.input_size, self.input_size],
                "channel_order": self.channel_order,
                "range": list(self.input_range),
                "resize": self.resize_policy,
                "normalisation": "inside the model: feed raw pixels",
            },
            "output": {"name": "probabilities", "meaning": "class probabilities, in labels order"},
        }

    @classmethod
    def from_json(cls, data: dict) -> "ModelInfo":
        inp = data["input"]
        return cls(
            labels=tuple(data["labels"]),
            input_size=int(inp["size"][0]),
            resize_policy=inp["resize"],
            model=data.get("model", "unknown"),
            input_range=tuple(inp.get("range", (0.0, 255.0))),
            channel_order=inp.get("channel_order", "RGB"),
        )

    def write(self, folder: Path) -> None:
        from edgetl.compiler.atomic import atomic_write_text

        atomic_write_text(folder / INFO_FILE, json.dumps(self.to_json(), indent=2) + "\n")
        atomic_write_text(folder / LABELS_FILE, "".join(f"{label}\n" for label in self.labels))


def find_model_info(model_path: Path, input_size: int, num_classes: int) -> ModelInfo:
    """The info edgetl wrote beside `model_path`, or a clearly labelled guess."""
    folder = Path(model_path).parent
    info_file = folder / INFO_FILE
    if info_file.is_file():
        try:
            info = ModelInfo.from_json(json.loads(info_file.read_text()))
        except (ValueError, KeyError, TypeError, IndexError):
            info = None
        if info is not None and len(info.labels) == num_classes:
            return info
    assumed = [f"input is RGB 0..255 resized (stretched) to {input_size}x{input_size}"]
    labels_file = folder / LABELS_FILE
    labels = [ln.strip() for ln in labels_file.read_text().splitlines() if ln.strip()] if labels_file.is_file() else []
    if len(labels) != num_classes:
        labels = [f"class_{i}" for i in range(num_classes)]
        assumed.append(f"no {LABELS_FILE} with {num_classes} lines beside the model: labels are class indices")
    return ModelInfo(
        labels=tuple(labels),
        input_size=input_size,
        resize_policy="bilinear, whole image stretched to the input size (assumed)",
        assumed=tuple(assumed),
    )
