"""report.html: one self-contained page (images inlined, no scripts, opens offline).

Built from the same dict as report.json, so the page and the JSON can never disagree.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from edgetl.compiler.atomic import atomic_write_text
from edgetl.compiler.robustness import render_section as render_robustness_section

HTML_FILE = "report.html"

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { padding: 3px 10px; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f6f6f6; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.chosen { background: #eaf6ea; font-weight: 600; } .muted { color: #777; } .warn { color: #a60; }
.box { background: #f7f9fc; border: 1px solid #dde5f0; padding: 0.8em 1em; border-radius: 6px; }
img { max-width: 100%; }
"""


def _e(value) -> str:
    return html.escape(str(value))


def _mb(n) -> str:
    return f"{n / 1e6:.2f} MB" if n is not None else ""


def _points(x) -> str:
    return f"{x * 100:+.2f} pt" if x is not None else ""


def _ms(x) -> str:
    return f"{x:.2f} ms" if x is not None else ""


def _pct(x) -> str:
    return f"{x:.2%}" if x is not None else ""


def _png_data_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _tradeoff_chart(artifacts: list[dict], chosen: str | None) -> str | None:
    """Accuracy against latency, marker area by file size: the trade-off at a glance."""
    points = [a for a in artifacts if a.get("latency_p50_ms") is not None]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    biggest = max(a["size_bytes"] for a in points)
    for a in points:
        area = 60 + 900 * a["size_bytes"] / biggest
        ax.scatter(a["latency_p50_ms"], a["test"]["accuracy"] * 100, s=area, alpha=0.55,
                   edgecolors="green" if a["file"] == chosen else "none", linewidths=2.5)
        ax.annotate(f"{a['file']}\n{a['size_bytes'] / 1e6:.1f} MB", (a["latency_p50_ms"], a["test"]["accuracy"] * 100),
                    fontsize=8, xytext=(6, 4), textcoords="offset points")
    ax.set_xlabel("latency p50 on this machine (ms, batch 1)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy vs latency (marker area: size on disk; green ring: deployed)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    uri = _png_data_uri(fig)
    plt.close(fig)
    return uri


def render(report: dict, out: Path) -> str:
    ds = report["dataset"]
    deployed = report["deployed"]
    chosen = deployed.get("tflite")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>edgetl report: {_e(Path(report['out']).name)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>edgetl compile report</h1><p class='muted'>{_e(report['out'])} &middot; {_e(report['created_utc'])} "
        f"&middot; edgetl {_e(report['edgetl_version'])} &middot; total {report['total_s']:.0f} s</p>",
    ]

    why = deployed.get("why")
    target = report.get("target")
    parts.append("<div class='box'>")
    if target:
        parts.append(f"<p><b>Target:</b> {_e(target['name'])}: {_e(target['summary'])}.</p>")
    parts.append(f"<p><b>Deployed file:</b> <code>{_e(chosen)}</code>"
                 + (f" and <code>{_e(deployed['onnx'])}</code>" if deployed.get("onnx") else "") + "</p>")
    if why:
        parts.append(f"<p><b>Why:</b> {_e(why)}</p>")
    parts.append("</div>")

    # Artefacts
    parts.append("<h2>Artefacts on the held-out test split</h2><table><tr>"
                 + "".join(f"<th>{h}</th>" for h in ("file", "runtime", "precision", "sparsity", "test accuracy",
                                                     "&Delta; vs float", "size", "gzip", "latency p50", "top-1 agreement"))
                 + "</tr>")
    for a in report["artifacts"]:
        parity = a.get("parity") or {}
        delta = a.get("accuracy_delta")
        parts.append(
            f"<tr class='{'chosen' if a['file'] in (chosen, deployed.get('onnx')) else ''}'>"
            f"<td>{_e(a['file'])}</td><td>{_e(a['runtime'])}</td><td>{_e(a.get('precision', ''))}</td>"
            f"<td class='n'>{_pct(a.get('sparsity')) if a.get('sparsity') else ''}</td>"
            f"<td class='n'>{_pct(a['test']['accuracy'])}</td>"
            f"<td class='n'>{_points(delta)}</td>"
            f"<td class='n'>{_mb(a['size_bytes'])}</td><td class='n'>{_mb(a.get('gzip_bytes'))}</td>"
            f"<td class='n'>{_ms(a.get('latency_p50_ms'))}</td>"
            + (f"<td class='n' title=\"against the {_e(parity.get('against', 'float Keras model'))}\">" if parity else "<td class='n'>")
            + f"{_pct(parity.get('top1_agreement')) if parity else '(reference)'}</td></tr>"
        )
    parts.append("</table><p class='muted'>Top-1 agreement is with the Keras model each file was converted "
                 "from: for a pruned file, the pruned model.</p>")
    chart = _tradeoff_chart(report["artifacts"], chosen)
    if chart:
        parts.append(f"<img alt='accuracy versus latency and size' src='{chart}'>")

    # Models
    parts.append("<h2>Models</h2><table><tr><th>role</th><th>model</th><th>input</th><th>params</th><th>MACs</th>"
                 "<th>test accuracy</th><th>macro F1</th><th>cached</th></tr>")
    for role, m in report["models"].items():
        parts.append(f"<tr><td>{_e(role)}</td><td>{_e(m['model'])}</td><td class='n'>{m['input_size']} px</td>"
                     f"<td class='n'>{m['params'] / 1e6:.2f}M</td><td class='n'>{m['macs'] / 1e6:.0f}M</td>"
                     f"<td class='n'>{_pct(m['test']['accuracy'])}</td><td class='n'>{m['test']['macro_f1']:.3f}</td>"
                     f"<td>{'yes' if m.get('cached') else ''}</td></tr>")
    parts.append("</table>")
    if report.get("distillation"):
        d = report["distillation"]
        parts.append(f"<p>Distillation changed test accuracy by <b>{d['distillation_gain_accuracy'] * 100:+.1f} points</b> "
                     "against the same student trained on the labels alone with the same budget.</p>")

    # Per class + confusion matrix of the deployed file
    deployed_artifact = next(a for a in report["artifacts"] if a["file"] == chosen)
    parts.append(f"<h2>Per class: {_e(chosen)}</h2><table><tr><th>class</th><th>precision</th><th>recall</th>"
                 "<th>F1</th><th>support</th></tr>")
    for row in deployed_artifact["test"]["per_class"]:
        parts.append(f"<tr><td>{_e(row['class'])}</td><td class='n'>{row['precision']:.3f}</td>"
                     f"<td class='n'>{row['recall']:.3f}</td><td class='n'>{row['f1']:.3f}</td>"
                     f"<td class='n'>{row['support']}</td></tr>")
    parts.append("</table>")
    confusion = Path(out) / "confusion_matrix.png"
    if confusion.is_file():
        uri = "data:image/png;base64," + base64.b64encode(confusion.read_bytes()).decode()
        parts.append(f"<h2>Confusion matrix</h2><img alt='confusion matrix' src='{uri}'>")

    # Data
    counts = ds["counts"]
    parts.append("<h2>Data</h2><p>" + _e(ds["root"]) + f": {len(ds['classes'])} classes; "
                 + ", ".join(f"{s} {sum(c.values())}" for s, c in counts.items()) + " images.</p>")
    for warning in ds.get("warnings", []):
        parts.append(f"<p class='warn'>warning: {_e(warning)}</p>")
    if ds.get("skipped"):
        parts.append("<p>Skipped files:</p><ul>" + "".join(
            f"<li><code>{_e(s['path'])}</code>: {_e(s['reason'])}</li>" for s in ds["skipped"]) + "</ul>")

    parts.append(render_robustness_section(report))
    parts.append("<h2>Wall time per stage</h2><table>" + "".join(
        f"<tr><td>{_e(k)}</td><td class='n'>{v:.1f} s</td></tr>" for k, v in report["timings_s"].items()) + "</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html_report(report: dict, out: Path) -> Path:
    path = Path(out) / HTML_FILE
    atomic_write_text(path, render(report, out))
    return path
