"""The table `edgetl bench` prints (stdout, so `> bench.txt` keeps it)."""

from __future__ import annotations


def _f(value, fmt: str, missing: str = "-") -> str:
    return missing if value is None else format(value, fmt)


def _accuracy(acc: dict | None) -> str:
    """'96.2% [93.0-98.0] n=240': the figure with its 95% Wilson interval and n."""
    if not acc:
        return "-"
    from edgetl.compiler.evaluation.stats import wilson_interval

    n = acc["images"]
    low, high = wilson_interval(acc.get("correct", round(acc["value"] * n)), n)
    return f"{acc['value']:.1%} [{low * 100:.1f}-{high * 100:.1f}] n={n}"


def print_table(report: dict, console=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from edgetl.compiler.evaluation.stats import describe_accuracy

    if console is None:
        probe = Console()
        console = Console(width=None if probe.is_terminal else 220, highlight=False)
    env = report["environment"]
    cpu = env["cpu"]
    batch = report["settings"]["batch"]
    title = f"edgetl bench · batch {batch} · {cpu['model']}"
    if cpu.get("pinned_cores"):
        title += f" · pinned to cores {cpu['pinned_cores']}"
    table = Table(title=title, title_justify="left")
    columns = [
        ("file", "left"), ("precision", "left"), ("runtime", "left"), ("thr", "right"),
        ("p50 ms", "right"), ("p90 ms", "right"), ("p99 ms", "right"), ("mean ± sd ms", "right"),
        ("img/s", "right"), ("load s", "right"), ("1st run ms", "right"), ("peak MB", "right"),
        ("size MB", "right"), ("accuracy", "right"), ("note", "left"),
    ]
    for name, justify in columns:
        table.add_column(name, justify=justify, overflow="fold")
    for r in report["results"]:
        base = [escape(r["file"]), r["precision"], r["runtime"], _f(r.get("threads"), "d")]
        if r["status"] != "ok":
            table.add_row(*base, *["-"] * 8, f"{r['size_bytes'] / 1e6:.1f}", "-",
                          f"[yellow]{escape(r['status'] + ': ' + r['reason'])}[/]")
            continue
        acc = r.get("accuracy")
        table.add_row(
            *base,
            f"{r['p50_ms']:.3f}", f"{r['p90_ms']:.3f}", f"{r['p99_ms']:.3f}",
            f"{r['mean_ms']:.3f} ± {r['std_ms']:.3f}",
            _f(r.get("throughput_ips"), ".1f"),
            f"{r['load_s']:.3f}",
            f"{r['first_run_ms']:.2f}",
            _f(r.get("peak_rss_mb"), ".0f"),
            f"{r['size_bytes'] / 1e6:.1f}",
            _accuracy(acc),
            escape(r.get("note", "")),
        )
    console.print(table)
    data = report.get("data")
    if data:
        console.print(escape(f"accuracy [95% Wilson interval] on {data['images']} images: {data['used']}"))
        mismatches = []
        for f in report["files"]:
            expected = f.get("compile_accuracy")
            got = [r["accuracy"] for r in report["results"] if r["path"] == f["path"] and r.get("accuracy")]
            if expected is not None and got and any(abs(g["value"] - expected) > 1e-12 for g in got):
                said = describe_accuracy(expected, f["compile_accuracy_images"]) if f.get("compile_accuracy_images") else f"{expected:.2%}"
                here = ", ".join(describe_accuracy(g["value"], g["images"]) for g in got)
                mismatches.append(f"{f['file']}: compile report {said}, here {here}")
        if mismatches:
            console.print("[yellow]differs from the compile report (other images?):[/] " + escape("; ".join(mismatches)))
    for f in report["files"]:
        if f["assumed"]:
            console.print(escape(f"note: {f['file']}: {'; '.join(f['assumed'])}"))
    console.print(
        "latency: one call on an input prepared once (copy in, inference, copy out); load: model "
        "file to ready session (runtime import apart); peak MB: the worker's peak resident memory"
    )
    for warning in env.get("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(warning)}")
