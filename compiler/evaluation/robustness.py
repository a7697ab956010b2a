"""How fragile is the model before it ships: accuracy under camera corruptions.

`score_robustness` runs each model (any `predict(images) -> probabilities`) on a seeded,
deterministic corruption suite of labelled images (compiler/data/corruptions.py: noise, blur,
exposure, colour cast, JPEG, pixelation) and returns the table that report.json holds under
"robustness": accuracy per corruption (mean over the severities) for each model, the clean
accuracy, and the weakest corruption. `render_section` turns that dict into a self-contained
HTML fragment (table and chart) for report.html; `edgetl bench --corruptions` uses the same
scoring for any file.

Cost: every (corruption, severity) pair is a full pass over the images, so the suite is kept
to severities 1, 3 and 5 (light, medium, heavy) and at most `DEFAULT_MAX_IMAGES` images
(a class-balanced, seeded subsample: 9 kinds x 3 severities x 120 images = 3,240 images per
model), which keeps it to a small share of a compile. The report says what was used.
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Callable, Mapping

import numpy as np

from edgetl.compiler.data.corruptions import CORRUPTIONS, corrupt
from edgetl.compiler.evaluation.stats import ci95, describe_accuracy, widest_half_interval, wilson_interval

DEFAULT_SEVERITIES = (1, 3, 5)
DEFAULT_MAX_IMAGES = 120


def subsample(y: np.ndarray, max_images: int, seed: int = 0) -> np.ndarray:
    """Indices of at most `max_images` images, class-balanced and seeded (all when fewer)."""
    from edgetl.compiler.compression.quantize import calibration_indices

    if len(y) <= max_images:
        return np.arange(len(y))
    return np.sort(calibration_indices(np.asarray(y), max_images, seed))


def score_robustness(
    models: Mapping[str, Callable[[np.ndarray], np.ndarray]],
    x: np.ndarray,
    y: np.ndarray,
    *,
    images_from: str,
    severities=DEFAULT_SEVERITIES,
    kinds=None,
    max_images: int = DEFAULT_MAX_IMAGES,
    seed: int = 0,
    reference: str | None = None,
) -> dict:
    """Accuracy of each model on every corruption of (x, y) at `severities`.

    models: name -> predict function (uint8 [N, H, W, 3] -> [N, classes]); x: uint8 pixels at
    the models' input size; images_from: which images these are, in words (for the report).
    reference: the model whose weakest corruption is named (default: the last one given,
    the deployed file by convention).
    """
    start = time.perf_counter()
    kinds = list(kinds or CORRUPTIONS)
    available = len(y)
    picks = subsample(y, max_images, seed)
    x, y = x[picks], np.asarray(y)[picks]
    names = list(models)
    reference = reference or names[-1]
    clean = {name: float(np.mean(models[name](x).argmax(1) == y)) for name in names}
    table = []
    for kind in kinds:
        by_severity = {name: [] for name in names}
        for severity in severities:
            corrupted = corrupt(x, kind, severity, seed)
            for name in names:
                by_severity[name].append(float(np.mean(models[name](corrupted).argmax(1) == y)))
        table.append({
            "corruption": kind,
            "accuracy": {name: float(np.mean(v)) for name, v in by_severity.items()},
            "by_severity": by_severity,
        })
    mean = {name: float(np.mean([row["accuracy"][name] for row in table])) for name in names}
    weakest = min(table, key=lambda row: row["accuracy"][reference])
    n = int(len(y))
    # Intervals at n = the images: the severities score the same images again, so pooling them
    # would claim more evidence than there is; a mean of correlated proportions varies no more
    # than one of them does.
    for row in table:
        row["ci95"] = {name: list(ci95(a, n)) for name, a in row["accuracy"].items()}
    return {
        "images_from": images_from,
        "images": int(len(y)),
        "available": int(available),  # images there were; more than "images" means a subsample
        "severities": list(severities),
        "seed": seed,
        "models": names,
        "reference": reference,
        "clean": clean,
        "clean_ci95": {name: list(ci95(a, n)) for name, a in clean.items()},
        "table": table,
        "mean_corrupted": mean,
        "weakest": {
            "corruption": weakest["corruption"],
            "model": reference,
            "accuracy": weakest["accuracy"][reference],
            "ci95": weakest["ci95"][reference],
            "n": n,
            "drop_from_clean": clean[reference] - weakest["accuracy"][reference],
        },
        "seconds": round(time.perf_counter() - start, 2),
    }


def session_predictor(session, batch_size: int = 32) -> Callable[[np.ndarray], np.ndarray]:
    return lambda images: session.predict(images, batch_size)


def format_table(section: dict) -> str:
    """The table as plain text, for the console (`edgetl bench --corruptions`)."""
    names = section["models"]
    width = max(12, *(len(n) for n in names))
    lines = [f"accuracy under camera corruptions, {section['images']} images ({section['images_from']}), "
             f"mean of severities {', '.join(map(str, section['severities']))}",
             f"{'corruption':<16}" + "".join(f"{n:>{width + 2}}" for n in names)]
    rows = [("clean", section["clean"])] + [(r["corruption"], r["accuracy"]) for r in section["table"]]
    rows.append(("mean corrupted", section["mean_corrupted"]))
    for label, acc in rows:
        lines.append(f"{label:<16}" + "".join(f"{acc[n]:>{width + 2}.1%}" for n in names))
    images = section["images"]
    widest = widest_half_interval([a for _, acc in rows for a in acc.values()], images)
    lines.append(f"each figure within about ±{100 * widest:.1f} points at 95% (Wilson, n={images}; the severities reuse the images)")
    w = section["weakest"]
    lines.append(f"weakest for {w['model']}: {w['corruption']} ({describe_accuracy(w['accuracy'], images)}, "
                 f"{w['drop_from_clean'] * 100:.1f} points below clean)")
    return "\n".join(lines)


# -- report.html section ----------------------------------------------------------------------


def _chart(section: dict) -> str | None:
    from edgetl.compiler.report.charts import _pyplot

    plt = _pyplot()

    names = section["models"]
    rows = [{"corruption": "clean", "accuracy": section["clean"]}] + section["table"]
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    n = section["images"]
    for i, name in enumerate(names):
        xs = np.arange(len(rows)) + (i - (len(names) - 1) / 2) * width
        heights = [100 * r["accuracy"][name] for r in rows]
        bounds = [wilson_interval(round(r["accuracy"][name] * n), n) for r in rows]
        errors = [[h - 100 * lo for h, (lo, _) in zip(heights, bounds)], [100 * hi - h for h, (_, hi) in zip(heights, bounds)]]
        ax.bar(xs, heights, width, label=name, yerr=errors, capsize=2, error_kw={"linewidth": 0.8})
    ax.set_xticks(np.arange(len(rows)), [r["corruption"].replace("_", "\n") for r in rows], fontsize=8)
    ax.set_ylabel(f"accuracy (%), n={n}, bars: 95% CI")
    ax.set_ylim(0, 100)
    ax.set_title(f"accuracy under camera corruptions (mean of severities {', '.join(map(str, section['severities']))})", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _cell(accuracy: float, n: int) -> str:
    low, high = wilson_interval(round(accuracy * n), n)
    return f"{accuracy:.1%} <span class='ci'>[{low:.1%}-{high:.1%}]</span>"


def render_section(report: dict) -> str:
    """The robustness section of report.html (empty when the report has none)."""
    section = report.get("robustness")
    if not section:
        return ""
    e = html.escape
    if section.get("skipped"):
        return f"<h2>Robustness to camera corruptions</h2><p class='muted'>Not scored: {e(section['skipped'])}</p>"
    names = section["models"]
    weakest = section["weakest"]
    images = section["images"]
    parts = [
        "<h2>Robustness to camera corruptions</h2>",
        f"<p>Accuracy on {section['images']} images ({e(section['images_from'])}) after each corruption, "
        f"mean of severities {', '.join(map(str, section['severities']))} of 5 (seed {section['seed']}). "
        f"Weakest for <code>{e(weakest['model'])}</code>: <b>{e(weakest['corruption'])}</b> "
        f"({describe_accuracy(weakest['accuracy'], images)}, {weakest['drop_from_clean'] * 100:.1f} points below clean). "
        f"Brackets: 95% Wilson intervals at n={images} (the severities reuse the same images).</p>",
        "<table><tr><th>corruption</th>" + "".join(f"<th>{e(n)}</th>" for n in names) + "</tr>",
        "<tr><td>clean</td>" + "".join(f"<td class='n'>{_cell(section['clean'][n], images)}</td>" for n in names) + "</tr>",
    ]
    for row in section["table"]:
        mark = " class='chosen'" if row["corruption"] == weakest["corruption"] else ""
        parts.append(f"<tr{mark}><td>{e(row['corruption'])}</td>"
                     + "".join(f"<td class='n'>{_cell(row['accuracy'][n], images)}</td>" for n in names) + "</tr>")
    parts.append("<tr><td><i>mean of corruptions</i></td>"
                 + "".join(f"<td class='n'>{_cell(section['mean_corrupted'][n], images)}</td>" for n in names) + "</tr></table>")
    if section.get("note"):
        parts.append(f"<p class='muted'>{e(section['note'])}</p>")
    chart = _chart(section)
    if chart:
        parts.append(f"<img alt='accuracy per corruption' src='{chart}'>")
    return "\n".join(parts)
