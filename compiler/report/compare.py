"""`edgetl report DIR [DIR2]`: a finished build's summary again, or two builds side by side.

Reads only report.json (no TensorFlow), so it answers at once. Two builds scored on the same
test images are compared image by image (paired difference); so are two cross-validated builds
of the same labelled images, by their out-of-fold answers; otherwise by their intervals.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from edgetl.compiler.progress import summary_console as console
from edgetl.compiler.report.summary import REPORT_FILE
from edgetl.compiler.report.facts import deployed_artifact, deployed_figure, intervals_overlap, report_shape_problem, test_predictions
from edgetl.compiler.evaluation.stats import paired_difference
from edgetl.errors import ReportError

_IGNORED_SETTINGS = {"out", "overwrite", "cache_dir", "use_cache"}


def load_report(folder: str | Path) -> dict:
    path = Path(folder) / REPORT_FILE
    if not Path(folder).is_dir():
        what = "is a file, not a build folder" if Path(folder).exists() else "does not exist"
        raise ReportError(f"{folder} {what}: pass the --out folder of a finished `edgetl compile`")
    if not path.is_file():
        raise ReportError(f"{folder} holds no {REPORT_FILE}: pass the --out folder of a finished `edgetl compile`")
    try:
        text = path.read_text()
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        report = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path} cannot be read as JSON ({exc}); was the compile interrupted?") from exc
    problem = report_shape_problem(report)
    if problem:
        raise ReportError(f"{path} is not an edgetl compile report: {problem}")
    return report


def paired_builds(a: dict, b: dict):
    """B's model.tflite minus A's on the same test images, or None when they were scored on different ones."""
    return _paired(test_predictions(a), test_predictions(b))


def paired_cv_builds(a: dict, b: dict):
    """B's out-of-fold estimate minus A's on the same labelled images (both builds chose by
    cross-validation on one folder), or None when they were not."""
    return _paired(a.get("deployed", {}).get("cv_predictions"), b.get("deployed", {}).get("cv_predictions"))


def _paired(rows_a, rows_b):
    """B minus A on the images both answered, matched by path, label and, where both reports
    recorded it, the digest of the image's bytes (not by order), or None unless both answered
    exactly the same images. Reports written before the digests were recorded match by path and
    label alone."""
    if not rows_a or not rows_b:
        return None
    with_digest = all("digest" in r for r in (*rows_a, *rows_b))

    def key(row):
        return (row["path"], row["true"], row["digest"] if with_digest else None)

    by_a = {key(r): r for r in rows_a}
    by_b = {key(r): r for r in rows_b}
    if by_a.keys() != by_b.keys() or len(by_a) != len(rows_a) or len(by_b) != len(rows_b):
        return None
    keys = sorted(by_a)
    return paired_difference([by_b[k]["predicted"] == by_b[k]["true"] for k in keys],
                             [by_a[k]["predicted"] == by_a[k]["true"] for k in keys])


def differing_settings(a: dict, b: dict) -> list[tuple[str, object, object]]:
    ca, cb = a.get("config", {}), b.get("config", {})
    keys = sorted((ca.keys() | cb.keys()) - _IGNORED_SETTINGS)
    return [(k, ca.get(k), cb.get(k)) for k in keys if ca.get(k) != cb.get(k)]


def compare_lines(a: dict, b: dict, name_a: str = "A", name_b: str = "B") -> list[str]:
    """What the comparison says in words: which build is better, or that the split cannot tell."""
    classes_a, classes_b = a["dataset"].get("classes"), b["dataset"].get("classes")
    if classes_a != classes_b:
        # Two builds of other tasks: no figure of one says anything about the other.
        shared = len(set(classes_a) & set(classes_b))
        return [(f"{name_a} and {name_b} classify different classes ({len(classes_a)} and {len(classes_b)}, {shared} shared): "
                 "they are builds of different tasks, so their accuracies cannot be compared.")]
    diff = paired_builds(a, b)
    if diff is not None:
        sentence = diff.verdict(name_b, name_a)
        if not diff.significant:
            sentence += ": the test split is too small to separate them"
        return [f"On the same {diff.n} test images: {sentence}."]
    fa, fb = deployed_figure(a), deployed_figure(b)
    if fa is None or fb is None:
        return ["One build has no accuracy figure: nothing to compare."]
    cv = paired_cv_builds(a, b) if fa.source == fb.source == "cv" else None
    if cv is not None:
        sentence = cv.verdict(name_b, name_a)
        if not cv.significant:
            sentence += ": these images cannot separate them"
        # What is paired is each build's estimate of its float model, as its report gives it: the
        # fold models differ from the deployed file, and one cross-validation run does not count
        # the training's own randomness, so a difference near the edge of the interval is fragile.
        return [f"Out of fold on the same {cv.n} labelled images (each build's cross-validated estimate of its "
                f"float model, not a score of its file): {sentence}."]
    if fa.source == fb.source == "cv":
        # Both cross-validated, but not pairable: other images, or a report written before the
        # out-of-fold answers were recorded.
        recorded = all(r.get("deployed", {}).get("cv_predictions") for r in (a, b))
        note = ("The two builds' cross-validated estimates are on different labelled images, so they cannot be paired "
                "image by image: " if recorded else
                "One build's report does not record its out-of-fold answers (compiled with an older edgetl: compile it "
                "again to record them), so the two cannot be paired image by image: ")
    elif fa.source != "test" or fb.source != "test":
        note = ("A build without a test split has a cross-validated estimate of its model, not a score of its "
                "file, so it cannot be paired image by image with a build scored on a test split: ")
    else:
        note = "The two builds were not scored on the same images, so they cannot be paired image by image: "
    if intervals_overlap(fa, fb):
        return [note + "their intervals overlap, so these figures cannot tell them apart."]
    better = name_a if fa.accuracy > fb.accuracy else name_b
    return [note + f"their intervals do not overlap: {better} is more accurate."]


def print_comparison(a: dict, b: dict, name_a: str, name_b: str) -> None:
    table = Table(title="two builds, model.tflite of each", title_justify="left")
    table.add_column("")
    table.add_column(f"A: {name_a}", overflow="fold")
    table.add_column(f"B: {name_b}", overflow="fold")

    def row(label, value):
        table.add_row(label, value(a), value(b))

    def art(report, key, fmt):
        value = (deployed_artifact(report) or {}).get(key)
        return fmt(value) if value is not None else "-"

    row("model", lambda r: f"{r['models'].get(r['deployed'].get('model'), {}).get('model', '?')} ({r['deployed'].get('model')})")
    row("precision", lambda r: art(r, "precision", str))
    row("accuracy", lambda r: deployed_figure(r).describe() if deployed_figure(r) else "-")
    row("size", lambda r: art(r, "size_bytes", lambda v: f"{v / 1e6:.2f} MB"))
    row("gzip", lambda r: art(r, "gzip_bytes", lambda v: f"{v / 1e6:.2f} MB"))
    row("latency p50", lambda r: art(r, "latency_p50_ms", lambda v: f"{v:.2f} ms")
        + f" ({(r.get('optimization') or {}).get('threads', '?')} threads)")
    row("classes", lambda r: str(len(r["dataset"]["classes"])))
    row("created", lambda r: str(r.get("created_utc", "")))
    console.print(table)
    for line in compare_lines(a, b, "A", "B"):
        console.print(line, markup=False, highlight=False)
    console.print("[dim]latency was measured on the machine of each compile: compare it only between builds made on one machine[/]")
    settings = differing_settings(a, b)
    if settings:
        console.print("settings that differ:")
        diff_table = Table()
        for col in ("setting", "A", "B"):
            diff_table.add_column(col, overflow="fold")
        for key, va, vb in settings:
            diff_table.add_row(key, str(va), str(vb))
        console.print(diff_table)
    else:
        console.print("same settings (output folder aside)")
