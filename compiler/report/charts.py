"""The charts of report.html, drawn with matplotlib (Agg) into PNG data URIs.

Made to stay readable from 2 to 20 files and 2 to 50 classes: points are numbered and named in
a legend rather than labelled in place, labels are moved apart when they would overlap, the
accuracy axis never leaves 0-100%, and titles are short (the page's headings carry the detail).
"""

from __future__ import annotations

import base64
import io

from edgetl.compiler.report.facts import accuracy_figure

_RUNTIME_COLOURS = {"litert": "#1f77b4", "onnxruntime": "#ff7f0e", "keras": "#7f7f7f"}


def _pyplot():
    """pyplot on the Agg backend (no display needed), for every chart edgetl draws."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # A class name in a script the installed fonts lack (e.g. CJK: DejaVu Sans has none) is drawn
    # as boxes; matplotlib's per-glyph warning, with its source line, would only clutter the console.
    warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
    return plt


def png_data_uri(fig, dpi: int = 110) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def tradeoff_points(report: dict) -> list[dict]:
    """The files worth plotting: each measured variant once (model.tflite and model.onnx are
    copies of one of them, marked as deployed instead), with an accuracy and a latency."""
    deployed = report["deployed"]
    chosen_variants = {deployed.get("tflite_variant"), deployed.get("onnx_variant")} - {None}
    points = []
    for a in report["artifacts"]:
        if a.get("latency_p50_ms") is None or (a.get("variant") and a["variant"] in chosen_variants):
            continue
        figure = accuracy_figure(a)
        if figure is None:
            continue
        chosen = a["file"] in chosen_variants or a["file"] in (deployed.get("tflite"), deployed.get("onnx"))
        points.append({"artifact": a, "figure": figure, "chosen": chosen})
    return points


def _place_labels(ax, xy_pixels: list[tuple[float, float]], texts: list[str]) -> list[tuple[float, float]]:
    """Offsets (in points) for short labels so that no two overlap and each stays inside the
    axes (clear of the title): greedy, nearest free spot."""
    frame = ax.get_window_extent()
    candidates = [(6, 4), (6, -12), (-6 - 7 * 2, 4), (-6 - 7 * 2, -12), (6, 16), (6, -24), (-20, 16), (-20, -24),
                  (16, 28), (16, -36), (-30, 28), (-30, -36), (28, 0), (-40, 0)]
    placed: list[tuple[float, float, float, float]] = []
    offsets = []
    scale = ax.figure.dpi / 72.0
    for (x, y), text in zip(xy_pixels, texts):
        w, h = 6.5 * len(text) * scale, 10 * scale
        chosen = candidates[0]
        for dx, dy in candidates:
            box = (x + dx * scale, y + dy * scale, x + dx * scale + w, y + dy * scale + h)
            inside = frame.x0 <= box[0] and box[2] <= frame.x1 and frame.y0 <= box[1] and box[3] <= frame.y1
            if inside and not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                chosen = (dx, dy)
                break
        dx, dy = chosen
        placed.append((x + dx * scale, y + dy * scale, x + dx * scale + w, y + dy * scale + h))
        offsets.append(chosen)
    return offsets


def tradeoff_chart(report: dict) -> str | None:
    """Accuracy (with its 95% interval) against latency; points numbered, named in the legend."""
    fig = tradeoff_figure(report)
    if fig is None:
        return None
    uri = png_data_uri(fig)
    _pyplot().close(fig)
    return uri


def tradeoff_figure(report: dict):
    points = tradeoff_points(report)
    if not points:
        return None
    plt = _pyplot()
    height = max(4.2, 1.2 + 0.24 * len(points))
    fig, ax = plt.subplots(figsize=(10, height))
    handles = []
    for i, p in enumerate(points, 1):
        a, f = p["artifact"], p["figure"]
        y = f.accuracy * 100
        colour = _RUNTIME_COLOURS.get(a["runtime"], "#2ca02c")
        ax.errorbar(a["latency_p50_ms"], y, yerr=[[max(0.0, y - f.low * 100)], [max(0.0, f.high * 100 - y)]], fmt="none",
                    ecolor=colour, alpha=0.45, capsize=3)
        handle = ax.scatter(a["latency_p50_ms"], y, s=70, color=colour, zorder=3,
                            edgecolors="green" if p["chosen"] else "white", linewidths=3 if p["chosen"] else 0.8,
                            label=f"{i}  {a['file']} · {a['size_bytes'] / 1e6:.1f} MB" + ("  (deployed)" if p["chosen"] else ""),
                            clip_on=False)  # a 100% point sits on the top edge: draw it whole
        handles.append(handle)
    lows = [p["figure"].low * 100 for p in points]
    highs = [p["figure"].high * 100 for p in points]
    span = max(highs) - min(lows)
    ax.set_ylim(max(0.0, min(lows) - 0.1 * span - 1), min(100.0, max(highs) + 0.1 * span + 1))
    latencies = [p["artifact"]["latency_p50_ms"] for p in points]
    if max(latencies) > 8 * min(latencies):
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_xlim(0, max(latencies) * 1.15)
    fig.canvas.draw()
    pixels = [tuple(ax.transData.transform((p["artifact"]["latency_p50_ms"], p["figure"].accuracy * 100))) for p in points]
    order = sorted(range(len(points)), key=lambda i: (-pixels[i][1], pixels[i][0]))
    labels = [str(i + 1) for i in range(len(points))]
    offsets = _place_labels(ax, [pixels[i] for i in order], [labels[i] for i in order])
    for i, (dx, dy) in zip(order, offsets):
        a = points[i]["artifact"]
        ax.annotate(labels[i], (a["latency_p50_ms"], points[i]["figure"].accuracy * 100), xytext=(dx, dy),
                    textcoords="offset points", fontsize=9, fontweight="bold")
    ax.set_xlabel("latency p50, batch 1, on the compiling machine (ms)")
    ax.set_ylabel("accuracy (%), bars: 95% interval")
    ax.set_title("Accuracy vs latency (green ring: deployed)", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
              handletextpad=0.3, borderaxespad=0)
    fig.tight_layout()
    return fig


def size_front_chart(choice: dict) -> str | None:
    """--student-size auto: each size's probe accuracy (out of fold, 95% interval) against its
    int8 file's p50; the kept size ringed. None when fewer than two sizes were measured."""
    rows = choice.get("sizes") or []
    if len(rows) < 2:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for row in rows:
        accuracy = row["accuracy"]
        y, (low, high) = accuracy["accuracy"] * 100, accuracy["ci95"]
        kept = row["size"] == choice["chosen"]
        colour = "#1f77b4" if row["gate"] == "passed" else "#d62728"
        ax.errorbar(row["int8_p50_ms"], y, yerr=[[max(0.0, y - low * 100)], [max(0.0, high * 100 - y)]], fmt="none",
                    ecolor=colour, alpha=0.45, capsize=3)
        ax.scatter(row["int8_p50_ms"], y, s=70, color=colour, zorder=3, edgecolors="green" if kept else "white",
                   linewidths=3 if kept else 0.8, clip_on=False)
        ax.annotate(f"{row['size']} px", (row["int8_p50_ms"], y), xytext=(6, 4), textcoords="offset points", fontsize=9)
    ax.set_xlim(0, max(row["int8_p50_ms"] for row in rows) * 1.25)
    ax.set_xlabel("int8 p50, batch 1, on the compiling machine (ms)")
    ax.set_ylabel("probe accuracy, out of fold (%)")
    ax.set_title("Student input size (blue: within the gate, red: refused; green ring: kept)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    uri = png_data_uri(fig)
    plt.close(fig)
    return uri


_STAGE_NAMES = {
    "head": "head on frozen features",
    "top": "fine-tuning the backbone",  # its top stages, or one stage deeper when the search chose that
    "distillation": "distillation from the teacher",
    "labels_only": "the same training on labels alone",
}


def training_stages(training: dict) -> list[tuple[str, dict]]:
    """(name, stage record) for every stage of a model's training that recorded per-epoch history."""
    found = []
    for key, value in (training or {}).items():
        if not isinstance(value, dict):
            continue
        stage = value.get("stage") if isinstance(value.get("stage"), dict) else value
        if stage.get("history"):
            found.append((_STAGE_NAMES.get(key, key.replace("_", " ")), stage))
    return found


def _wilson_band(ax, xs, accuracies, n: int, color) -> float:
    """Shade each point's 95% Wilson interval (accuracies as fractions, n images); the band's lowest %."""
    from edgetl.compiler.evaluation.stats import wilson_interval

    bounds = [wilson_interval(round(a * n), n) for a in accuracies]
    lows, highs = [100 * b[0] for b in bounds], [100 * b[1] for b in bounds]
    ax.fill_between(list(xs), lows, highs, color=color, alpha=0.15, linewidth=0)
    return min(lows)


def training_chart(role: str, training: dict) -> str | None:
    """Loss and accuracy per epoch (train and val) for each stage, the epoch kept marked."""
    stages = training_stages(training)
    if not stages:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(stages), 2, figsize=(10, 2.7 * len(stages)), squeeze=False)
    for row, (name, stage) in enumerate(stages):
        history = stage["history"]
        for col, metric in enumerate(("loss", "accuracy")):
            ax = axes[row][col]
            n_val = stage.get("val_images") or 0
            for key, style, label in ((metric, "-o", "train"), (f"val_{metric}", "-s", f"val (n={n_val})" if n_val else "val")):
                values = history.get(key)
                if values:
                    scale = 100 if metric == "accuracy" else 1
                    lines = ax.plot(range(1, len(values) + 1), [v * scale for v in values], style, markersize=3.5, label=label)
                    if key == "val_accuracy" and n_val:  # how far each epoch's figure can be trusted
                        _wilson_band(ax, range(1, len(values) + 1), values, n_val, lines[0].get_color())
            best = stage.get("best_epoch", 0)
            if best:
                ax.axvline(best, color="green", linestyle="--", linewidth=1.2, label=f"kept: epoch {best}")
            if metric == "accuracy":
                ax.set_ylim(0, 100)
                ax.set_ylabel("accuracy (%)" + (", band: 95% CI" if n_val and history.get("val_accuracy") else ""))
            else:
                ax.set_ylim(bottom=0)
                ax.set_ylabel("loss")
            epochs = max((len(v) for v in history.values()), default=1)
            ax.set_xlim(0.5, epochs + 0.5)
            ax.set_xticks(range(1, epochs + 1, max(1, epochs // 10)))
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="best", framealpha=0.8)
            kept = f"kept epoch {best}" if best else "no epoch beat the start; weights from before kept"
            ax.set_title(f"{role}: {name}" if col == 0 else kept, fontsize=10)
    fig.tight_layout()
    uri = png_data_uri(fig, dpi=100)
    plt.close(fig)
    return uri


def selection_records(training: dict) -> list[tuple[str, dict]]:
    """(stage name, selection record) of every stage that chose between the probe and training,
    by cross-validation (compiler/training/crossval.py) or on the val split (compiler/training/finetune.py)."""
    found = []
    for key, value in (training or {}).items():
        selection = value.get("selection") if isinstance(value, dict) else None
        if key == "selection":
            selection, key = value, "top"
        if isinstance(selection, dict) and "probe_kept" in selection:
            found.append((_STAGE_NAMES.get(key, key.replace("_", " ")), selection))
    return found


def cross_validation_curves(training: dict) -> list[tuple[str, dict]]:
    """(name, selection record) of every stage chosen by cross-validation (compiler/training/crossval.py)."""
    return [(name, selection) for name, selection in selection_records(training)
            if "cross-validation" in str(selection.get("method")) and selection.get("accuracy_by_epoch")]


def cross_validation_chart(role: str, training: dict) -> str | None:
    """Out-of-fold accuracy after each epoch (0: the linear probe), the choice marked."""
    curves = cross_validation_curves(training)
    if not curves:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 2.9), squeeze=False)
    for ax, (name, selection) in zip(axes[0], curves):
        curves_by_recipe = selection.get("recipes") or {"out of fold": selection["accuracy_by_epoch"]}
        lowest = 100.0
        n = (selection.get("estimate") or {}).get("n") or 0
        for recipe, accuracies in curves_by_recipe.items():
            values = [v * 100 for v in accuracies]
            lowest = min(lowest, *values)
            lines = ax.plot(range(len(values)), values, "-o", markersize=3.5, label=recipe)
            if n:
                lowest = min(lowest, _wilson_band(ax, range(len(values)), accuracies, n, lines[0].get_color()))
        ax.axhline(selection["accuracy_by_epoch"][0] * 100, color="grey", linestyle=":", linewidth=1, label="linear probe (epoch 0)")
        chosen = selection.get("chosen_epochs", 0)
        recipe = f" ({selection['recipe']})" if selection.get("recipe") else ""
        ax.axvline(chosen, color="green", linestyle="--", linewidth=1.2, label=f"chosen: {chosen} epochs{recipe}" if chosen else "chosen: the probe")
        ax.set_ylim(max(0, lowest - 10), 100)
        ax.set_xlabel("epochs of training (0 = the probe)")
        ax.set_ylabel(f"accuracy (%), n={n}, band: 95% CI" if n else "accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right", framealpha=0.8)
        ax.set_title(f"{role}: {name}, {selection['method']}", fontsize=10)
    fig.tight_layout()
    uri = png_data_uri(fig, dpi=100)
    plt.close(fig)
    return uri


def confusion_figure(cm: list[list[int]], classes: list[str], title: str):
    """The confusion matrix, rows normalised: correct answers in blue on the diagonal, mistakes in
    red off it (on their own scale, so a 5% confusion still shows beside 95% diagonals). Counts
    are printed while the cells are big enough to hold them (up to 30 classes)."""
    import textwrap

    import numpy as np

    plt = _pyplot()
    cm = np.asarray(cm, dtype=float)
    n = len(classes)
    cell = 0.55 if n <= 12 else (0.4 if n <= 25 else 0.28)
    longest = max((len(c) for c in classes), default=4)
    label_in = min(2.5, 0.09 * longest + 0.3)
    side = n * cell + label_in + 1.6
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    diagonal = np.eye(n, dtype=bool)
    off = np.ma.masked_where(diagonal | (rates == 0), rates)
    worst = float(off.max()) if off.count() else 1.0
    ax.imshow(np.ma.masked_where(~diagonal, rates), cmap="Blues", vmin=0, vmax=1)
    errors = ax.imshow(off, cmap="Reds", vmin=0, vmax=max(worst, 0.05))
    ax.set_facecolor("white")
    if n <= 30:
        size = 9 if n <= 12 else 7
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    dark = rates[i, j] > 0.5 if i == j else rates[i, j] > 0.6 * worst
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=size,
                            color="white" if dark else "black")
    tick = 9 if n <= 20 else 7
    ax.set_xticks(range(n), classes, rotation=60 if n > 6 else 30, ha="right", rotation_mode="anchor", fontsize=tick)
    ax.set_yticks(range(n), classes, fontsize=tick)
    ax.set_xticks(np.arange(-0.5, n, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n, 1), minor=True)
    ax.grid(which="minor", color="#e6e6e6", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("\n".join(textwrap.wrap(title, max(30, int(side * 9)))), fontsize=10)
    bar = fig.colorbar(errors, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label("mistakes: share of the true class", fontsize=8)
    bar.ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}" if worst >= 0.2 else f"{v:.1%}"))
    fig.tight_layout()
    return fig


def confusion_chart(cm: list[list[int]], classes: list[str], title: str) -> str:
    plt = _pyplot()
    fig = confusion_figure(cm, classes, title)
    uri = png_data_uri(fig)
    plt.close(fig)
    return uri
