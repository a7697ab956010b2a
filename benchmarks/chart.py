"""bench.png: p50 latency per case with its p90-p99 spread, accuracy and load time as labels."""

from __future__ import annotations

from pathlib import Path

from edgetl.benchmarks.table import _accuracy


def case_label(row: dict) -> str:
    threads = f" ×{row['threads']}t" if row.get("threads") else ""
    return f"{row['file']} · {row['runtime']}{threads}"


def plot_bench(report: dict, path: Path) -> Path:
    from edgetl.compiler.report.charts import _pyplot

    from edgetl.atomic import atomic_path

    plt = _pyplot()

    rows = [r for r in report["results"] if r["status"] == "ok"]
    skipped = [r for r in report["results"] if r["status"] != "ok"]
    labels = [case_label(r) for r in rows]
    p50 = [r["p50_ms"] for r in rows]
    p90 = [r["p90_ms"] for r in rows]
    p99 = [r["p99_ms"] for r in rows]
    colours = {"litert": "#1f77b4", "onnxruntime": "#ff7f0e", "keras": "#7f7f7f"}

    height = 1.6 + 0.42 * len(rows) + 0.22 * len(skipped)
    fig, ax = plt.subplots(figsize=(10, height), dpi=110)
    y = list(range(len(rows)))[::-1]
    ax.barh(y, p50, color=[colours.get(r["runtime"], "#2ca02c") for r in rows], alpha=0.85, label="p50")
    ax.hlines(y, p50, p90, color="black", linewidth=1.5, label="p50 to p90")
    ax.plot(p99, y, "k|", markersize=10, label="p99")
    for yi, r in zip(y, rows):
        text = f" {r['p50_ms']:.2f} ms"
        if r.get("accuracy"):
            text += f" · acc {_accuracy(r['accuracy'])}"
        text += f" · load {r['load_s']:.2f} s · {r['size_bytes'] / 1e6:.1f} MB {r['precision']}"
        ax.text(max(r["p99_ms"], r["p90_ms"]), yi, text, va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel(f"latency per call, batch {report['settings']['batch']} (ms)")
    ax.set_xlim(0, max(p99) * 2.2 if p99 else 1)
    cpu = report["environment"]["cpu"]
    pinned = f", pinned to cores {cpu['pinned_cores']}" if cpu.get("pinned_cores") else ""
    ax.set_title(f"edgetl bench · {cpu['model']}{pinned} · {report['created_utc'][:10]}", fontsize=9)
    ax.legend(loc="upper right", fontsize=7, framealpha=0.9)
    if skipped:
        note = "\n".join(f"{case_label(r)}: {r['status']}: {r['reason']}" for r in skipped)
        fig.text(0.01, 0.005, note, fontsize=7, va="bottom", ha="left", color="#555555", wrap=True)
        fig.subplots_adjust(bottom=0.08 + 0.25 * len(skipped) / height)
    fig.tight_layout(rect=(0, 0.22 * len(skipped) / height, 1, 1))
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
