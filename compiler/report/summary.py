"""The compile report: report.json, confusion_matrix.png and the summary printed at the end."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table
from rich.text import Text

from edgetl.atomic import atomic_path, atomic_write_text
from edgetl.compiler.progress import summary_console as console
from edgetl.compiler.evaluation.stats import wilson_interval
from edgetl.compiler.report.facts import Figure, accuracy_figure, distillation_sentence, macro_f1_text
from edgetl.compiler.report.verdict import build_verdict

REPORT_FILE = "report.json"
CONFUSION_PNG = "confusion_matrix.png"


def write_report(report: dict, out: Path) -> Path:
    path = Path(out) / REPORT_FILE
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    return path


def plot_confusion_matrix(cm: list[list[int]], classes: list[str], title: str, path: Path) -> Path:
    """confusion_matrix.png: the same drawing as report.html's (compiler/report/charts.py)."""
    from edgetl.compiler.report.charts import _pyplot, confusion_figure

    plt = _pyplot()
    fig = confusion_figure(cm, classes, title)
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def _best_val(training: dict) -> float:
    """The best validation accuracy any stage of a model's training reached."""
    found = [v["best_val_accuracy"] for v in _walk(training) if "best_val_accuracy" in v]
    return max(found) if found else float("nan")


def _best_val_cell(training: dict, n_val: int) -> str:
    """The best val accuracy with its interval and n, or "" (not trained here, or no val split).
    It is the epoch that val chose, so it reads high: the test column is the figure to quote."""
    best = _best_val(training)
    if best != best or not n_val:  # nan
        return ""
    return Figure(best, n_val, *wilson_interval(round(best * n_val), n_val), source="val").short()


def _walk(d):
    if isinstance(d, dict):
        yield d
        for v in d.values():
            yield from _walk(v)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def print_summary(report: dict) -> None:
    ds = report["dataset"]
    classes = ds["classes"]
    console.rule("[bold]edgetl compile report")
    counts = ds["counts"]
    split_totals = ", ".join(f"{s} {sum(c.values())}" for s, c in counts.items())
    console.print(f"dataset  {ds['root']}: {len(classes)} classes, {split_totals} images")
    if ds["skipped"]:
        console.print(f"[yellow]skipped {len(ds['skipped'])} unreadable file{'s' if len(ds['skipped']) != 1 else ''}:")
        for item in ds["skipped"][:10]:
            console.print(f"  {item['path']}: {item['reason']}")
        if len(ds["skipped"]) > 10:
            console.print(f"  ... and {len(ds['skipped']) - 10} more (see report.json)")
    for warning in ds["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")

    models = report["models"]
    model_table = Table(title="models (accuracy [95% CI] n)", title_justify="left")
    for col in ("role", "model", "input", "params", "MACs", "accuracy", "macro F1", "best val accuracy"):
        model_table.add_column(col, justify="left" if col in ("role", "model") else "right")
    for role, m in models.items():
        model_table.add_row(
            role,
            m["model"],
            f"{m['input_size']} px",
            f"{m['params'] / 1e6:.2f}M",
            f"{m['macs'] / 1e6:.1f}M",
            _accuracy_cell(m),
            macro_f1_text(m),
            _best_val_cell(m["training"], report.get("evaluation", {}).get("val_images") or 0),
        )
    console.print(model_table)
    if report.get("distillation"):
        console.print(distillation_sentence(report["distillation"]))

    scored = any(a.get("test") for a in report["artifacts"])
    accuracy_note = "accuracy [95% CI] n" if scored else "no test split, so no file was scored: the models' cross-validated estimates are above"
    table = Table(title=f"artefacts ({accuracy_note}; latency: batch 1, this machine)", title_justify="left")
    sparse = any(a.get("sparsity") for a in report["artifacts"])  # no pruning: no empty column
    # The change against fp32 is on the images the accuracy column is on, the gate's on its own
    # (val, or the training images): a newcomer read "+0.00" beside "failed" as a contradiction.
    delta_on = "test" if scored else "train"
    gate_on = next((a["gate_accuracy"].get("split") for a in report["artifacts"] if a.get("gate_accuracy")), None)
    gate_col = "gate" if gate_on is None else f"gate ({gate_on})"
    for col in ("file", "runtime", "precision", *(["sparsity"] if sparse else []), "size", "gzip", "p50", "accuracy",
                f"Δ fp32 ({delta_on})", "agree", gate_col):
        # The file name and the figures never wrap or shorten (an ellipsis made variants/model.fp32.tflite
        # and .onnx read alike); the accuracy cell may fold its n onto a second line.
        table.add_column(col, justify="left" if col in ("file", "runtime", "precision", gate_col) else "right",
                         no_wrap=col != "accuracy")
    for a in report["artifacts"]:
        parity = a.get("parity")
        delta = a.get("accuracy_delta")
        table.add_row(
            a["file"],
            a["runtime"],
            a.get("precision", ""),
            *([f"{a['sparsity']:.0%}" if a.get("sparsity") else ""] if sparse else []),
            _mb(a["size_bytes"]),
            _mb(a["gzip_bytes"]) if a.get("gzip_bytes") else "",
            f"{a['latency_p50_ms']:.2f} ms" if a.get("latency_p50_ms") is not None else "",
            _accuracy_cell(a),
            f"{delta * 100:+.2f}" if delta is not None else "",
            f"{parity['top1_agreement']:.2%}" if parity else "(reference)",
            (a.get("gate") or "").split(":")[0],  # "passed" / "failed"; the why is in report.json
        )
    console.print(table)
    console.print("[dim]agree: top-1 agreement with the Keras model the file was converted from (for a pruned file, the pruned model)[/]")
    noise = change_noise(report["artifacts"])
    if noise:
        console.print(Text(noise, style="dim"))
    # Text, not markup: the reason may hold brackets that rich would read as tags.
    console.print(Text.assemble(("deployed: ", "bold"), report["deployed"].get("why", "")))

    deployed = next(a for a in report["artifacts"] if a["file"] == report["deployed"]["tflite"])
    if not deployed.get("test"):  # no test split (cross-validated compile): no per-class figures
        _print_tail(report)
        return
    others = [role for role in models if role != report["deployed"]["model"]]
    beside = "; F1 of the other models beside it" if others else ""
    per_class = Table(title=f"per class ({deployed['file']}{beside})", title_justify="left")
    for col in ("class", "precision", "recall", "F1", *[f"F1 {r}" for r in others], "support"):
        per_class.add_column(col, justify="left" if col == "class" else "right")
    for i, row in enumerate(deployed["test"]["per_class"]):
        other_f1 = [f"{models[r]['test']['per_class'][i]['f1']:.3f}" for r in others]
        per_class.add_row(
            row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", *other_f1, str(row["support"])
        )
    console.print(per_class)

    cm = deployed["test"]["confusion_matrix"]
    if len(classes) <= 20:
        cm_table = Table(title="confusion matrix (rows: true, columns: predicted)", title_justify="left")
        cm_table.add_column("")
        for j in range(len(classes)):
            cm_table.add_column(str(j), justify="right")
        for i, name in enumerate(classes):
            cm_table.add_row(f"{i} {name}", *[(str(v) if v else ".") for v in cm[i]])
        console.print(cm_table)

    _print_tail(report)


def _accuracy_cell(entry: dict) -> str:
    figure = accuracy_figure(entry)
    return figure.short() if figure else "-"


def _print_tail(report: dict) -> None:
    """The verdict, wall time and where the files are."""
    for line in build_verdict(report).lines():
        console.print(line, markup=False, highlight=False)
    timings = "  ".join(f"{k} {v:.0f}s" for k, v in report["timings_s"].items())
    console.print(f"wall time  {timings}  (total {report['total_s']:.0f}s)")
    if report.get("peak_memory_mb"):
        console.print(f"peak memory  {max(report['peak_memory_mb'].values()) / 1024:.1f} GiB (report.html: after each stage)")
    from edgetl.compiler.stages import STAGES

    optional = [f"{s.name} {report['timings_s'][s.name]:.0f}s ({s.skip_with})" for s in STAGES if s.skip_with and s.name in report["timings_s"]]
    if optional:
        console.print(f"optional   {'; '.join(optional)}", markup=False, highlight=False)
    console.print(f"[bold green]done:[/] {report['out']}/ holds {', '.join(report['files'])}")


def change_noise(artifacts: list[dict]) -> str | None:
    """One line on how far the table's Δ fp32 and agree columns can be trusted: the widest paired
    95% interval of a change and the widest Wilson interval of an agreement (the console has no
    room for one per cell; report.html and report.json give each). None when neither was recorded."""
    # model.tflite and model.onnx repeat a variant's row: name each file once, by its variant.
    changes = [a for a in artifacts if a.get("accuracy_delta_ci95") and not a.get("variant")]
    agreements = [(a["parity"]["top1_agreement_ci95"], a["parity"].get("images")) for a in artifacts
                  if (a.get("parity") or {}).get("top1_agreement_ci95")]
    parts = []
    if changes:
        widest = max(a["accuracy_delta_ci95"][1] - a["accuracy_delta_ci95"][0] for a in changes) * 50
        beyond = sorted({a["file"] for a in changes if not a["accuracy_delta_ci95"][0] <= 0 <= a["accuracy_delta_ci95"][1]})
        parts.append(f"Δ fp32 is paired on the same images, each 95% interval within ±{widest:.1f} points; "
                     + (f"beyond noise: {', '.join(beyond)}" if beyond else "none is beyond noise"))
    if agreements:
        widest = max(span[1] - span[0] for span, _ in agreements) / 2
        n = agreements[0][1]
        parts.append(f"agree: 95% intervals within ±{widest:.1%} (n={n})")
    return "; ".join(parts) + " (each in report.html and report.json)." if parts else None

