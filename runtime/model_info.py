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
    # Where the labels and input contract were read from: a file path, "inside the model",
    # or "assumed".
    source: str = "assumed"

    @property
    def made_by_edgetl(self) -> bool:
        return not self.assumed

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
        labels = data["labels"]
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise ValueError("labels must be a list of class names")  # a string would read as one label per letter
        return cls(
            labels=tuple(labels),
            input_size=int(inp["size"][0]),
            resize_policy=inp["resize"],
            model=data.get("model", "unknown"),
            input_range=tuple(inp.get("range", (0.0, 255.0))),
            channel_order=inp.get("channel_order", "RGB"),
        )

    def write(self, folder: Path) -> None:
        from edgetl.atomic import atomic_write_text

        atomic_write_text(folder / INFO_FILE, json.dumps(self.to_json(), indent=2) + "\n")
        atomic_write_text(folder / LABELS_FILE, "".join(f"{label}\n" for label in self.labels))


def find_model_info(
    model_path: Path,
    input_size: int,
    num_classes: int,
    embedded: dict | None = None,
    layout: str = "NHWC",
) -> ModelInfo:
    """The info that came with `model_path`, or a clearly labelled guess.

    Looked up in order: `embedded` (what the file carries inside itself: a model_info dict or
    {"labels": [...]}), `model_info.json` beside the file, `labels.txt` beside the file. Info
    whose labels or input size do not fit the file is ignored, and the guess says why.
    """
    folder = Path(model_path).parent
    assumed: list[str] = []
    candidates: list[tuple[str, dict | None]] = []
    if embedded and "input" in embedded:
        candidates.append(("inside the model", embedded))
    info_file = folder / INFO_FILE
    if info_file.is_file():
        try:
            candidates.append((str(info_file), json.loads(info_file.read_text(encoding="utf-8"))))
        except (OSError, ValueError):
            assumed.append(f"{INFO_FILE} beside the model is unreadable, so it was ignored")
    for source, data in candidates:
        try:
            info = ModelInfo.from_json(data)
        except (ValueError, KeyError, TypeError, IndexError):
            assumed.append(f"{source} is not a valid {INFO_FILE}, so it was ignored")
            continue
        if len(info.labels) != num_classes:
            assumed.append(f"{source} lists {len(info.labels)} labels but the model has {num_classes} outputs, so it was ignored")
        elif info.input_size != input_size:
            assumed.append(f"{source} is for {info.input_size} px input but the model takes {input_size} px, so it was ignored")
        else:
            return dataclasses.replace(info, source=source)

    assumed.insert(0, f"input is RGB 0..255 resized (stretched) to {input_size}x{input_size}, normalisation inside the model")
    if layout != "NHWC":
        assumed.append(f"input layout {layout}: pixels are transposed to it")
    labels, source = [], "assumed"
    if embedded and embedded.get("labels") and len(embedded["labels"]) == num_classes:
        labels, source = [str(x) for x in embedded["labels"]], "inside the model"
    labels_file = folder / LABELS_FILE
    if not labels and labels_file.is_file():
        try:
            lines = [ln.strip() for ln in labels_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError):
            lines = []
        if len(lines) == num_classes:
            labels, source = lines, str(labels_file)
        else:
            assumed.append(f"{labels_file} has {len(lines)} labels but the model has {num_classes} outputs, so it was ignored")
    if not labels:
        labels = [f"class_{i}" for i in range(num_classes)]
        assumed.append(f"no {LABELS_FILE} with {num_classes} lines beside the model: labels are class indices")
    return ModelInfo(
        labels=tuple(labels),
        input_size=input_size,
        resize_policy="bilinear, whole image stretched to the input size (assumed)",
        assumed=tuple(assumed),
        source=source,
    )
