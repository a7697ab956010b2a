"""report.html, the console summary and `edgetl report`, on hand-made report.json dicts (fast)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.compiler.report.html import render
from edgetl.compiler.report.charts import _place_labels, tradeoff_figure, training_stages
from edgetl.compiler.report.facts import accuracy_figure, deployed_figure
from edgetl.compiler.report.gallery import misclassified
from edgetl.compiler.report.verdict import build_verdict
from report_samples import make_report


def _deployed_cm(report):
    return next(a for a in report["artifacts"] if a["file"] == "model.tflite")["test"]["confusion_matrix"]


def _figures(page: str) -> list[tuple[str, str]]:
    """(true, predicted) of each thumbnail in the page's gallery."""
    return re.findall(r"<figure[^>]*>.*?true: <b>(.*?)</b><br>predicted: <b>(.*?)</b>", page)


@pytest.mark.parametrize("num_classes", [2, 12, 50])
def test_gallery_lists_exactly_the_misclassified_test_images(tmp_path, num_classes):
    report = make_report(tmp_path / "data", tmp_path, num_classes=num_classes, per_class=5, seed=num_classes)
    cm = np.asarray(_deployed_cm(report))
    groups = misclassified(report)
    from_gallery = np.zeros_like(cm)
    for g in groups:
        for m in g.mistakes:
            from_gallery[report["dataset"]["classes"].index(m.true), report["dataset"]["classes"].index(m.predicted)] += 1
        confidences = [m.confidence for m in g.mistakes]
        assert confidences == sorted(confidences, reverse=True)  # most confident mistake first
    off_diagonal = cm - np.diag(np.diag(cm))
    assert off_diagonal.sum() > 0
    assert (from_gallery == off_diagonal).all()
    sizes = [len(g.mistakes) for g in groups]
    assert sizes == sorted(sizes, reverse=True)  # the most frequent confusion first

    page = render(report, tmp_path)
    shown = _figures(page)
    assert len(shown) == off_diagonal.sum()
    classes = report["dataset"]["classes"]
    assert all(t != p for t, p in shown)
    pairs, counts = np.unique([(classes.index(t), classes.index(p)) for t, p in shown], axis=0, return_counts=True)
    for (i, j), count in zip(pairs, counts):
        assert cm[i, j] == count


def test_label_error_needs_a_confident_mistake_that_the_other_models_repeat(tmp_path):
    report = make_report(tmp_path / "data", tmp_path, images=False)
    rows = report["deployed"]["test_predictions"]
    a, b, c = rows[0], rows[1], rows[2]
    for row, confidence, teacher_says in ((a, 0.97, "same"), (b, 0.97, "other"), (c, 0.5, "same")):
        row["predicted"] = next(x for x in report["dataset"]["classes"] if x != row["true"])
        row["confidence"] = confidence
        for role in ("teacher", "baseline"):
            said = row["predicted"] if teacher_says == "same" else row["true"]
            row["keras"][role] = {"predicted": said, "confidence": 0.9}
    flags = {m.path: m.possible_label_error for g in misclassified(report) for m in g.mistakes}
    assert flags[a["path"]] is True  # confident and repeated by teacher and baseline
    assert flags[b["path"]] is False  # the other models keep the label
    assert flags[c["path"]] is False  # not confident
    assert "check the labels of the 1 test image" in build_verdict(report).next_step
    # A latency budget the file misses is the next step before a flagged label: the user asked for it.
    from edgetl.compiler.report.facts import deployed_artifact

    deployed_artifact(report)["latency_p50_ms"] = 1.89
    report.setdefault("config", {})["max_latency_ms"] = 1.3
    assert "budget" in build_verdict(report).next_step


def test_without_a_test_split_the_cross_validated_figure_is_shown(tmp_path, capsys):
    report = make_report(tmp_path / "data", tmp_path, with_test=False)
    figure = deployed_figure(report)
    assert figure.source == "cv" and figure.n == report["models"]["student"]["cv"]["n"]
    page = render(report, tmp_path)
    assert "cross-validat" in page and "No gallery: this compile had no test split" in page
    assert "Delta; vs float is on the training images (there is no test split)" in page
    assert "Delta; vs float is on the test images" in render(make_report(tmp_path / "data4", tmp_path / "d"), tmp_path / "d")
    # The macro F1 column reads the cross-validated figure too, marked as such (it was left empty).
    f1 = report["models"]["student"]["cv"]["macro_f1"]
    assert f"<td class='n'>{f1:.3f} (cv)</td>" in page
    verdict = build_verdict(report)
    assert "cross-validation" in verdict.headline and "no test split" in verdict.measured.lower()
    from edgetl.compiler.report.summary import print_summary

    print_summary(report)
    out = capsys.readouterr().out
    assert "(cv)" in out and "cross-validat" in out and "no test split, so no file was scored" in out
    assert f"{f1:.3f} (cv)" in out
    assert "Δ fp32 (train)" in out  # no test split: the change is on the training images
    # Two such builds: not "scored on different images" (they were not scored at all).
    from edgetl.compiler.report.compare import compare_lines

    (line,) = compare_lines(report, make_report(tmp_path / "data2", tmp_path / "b", with_test=False))
    assert line.startswith("One build's report does not record its out-of-fold answers")
    (line,) = compare_lines(report, make_report(tmp_path / "data3", tmp_path / "c"))
    assert line.startswith("A build without a test split has a cross-validated estimate of its model, not a score of its file")


def test_a_missed_latency_budget_names_the_compile_that_can_meet_it(tmp_path):
    from edgetl.compiler.report.facts import deployed_artifact

    report = make_report(tmp_path / "data", tmp_path, with_test=False)
    deployed_artifact(report)["latency_p50_ms"] = 1.89
    report.setdefault("config", {})["max_latency_ms"] = 5.0
    assert "budget" not in (build_verdict(report).next_step or "")  # within it: nothing to say
    # Over it, with the student's input size fixed: the size search is the next step.
    report["config"]["max_latency_ms"] = 1.3
    step = build_verdict(report).next_step
    assert "1.89 ms p50 is over the 1.3 ms budget" in step and "--student-size auto" in step
    # Over it after the size search: a channel-pruned variant that met it is named, else what could still meet it.
    resolution = {"chosen": 160, "max_latency_ms": 1.3, "slim_options": [], "slim_pick": None}
    report["models"]["student"].setdefault("training", {})["resolution"] = resolution
    step = build_verdict(report).next_step
    assert "over the 1.3 ms budget and no student input size within the accuracy gate met it: a larger --max-latency-ms" in step
    resolution["slim_options"] = [{"model": "efficientnet_lite0_slim50", "size": 128, "int8_p50_ms": 1.4},
                                  {"model": "efficientnet_lite0_slim75", "size": 128, "int8_p50_ms": 1.6}]
    assert "nor did a channel-pruned student (the fastest, efficientnet_lite0_slim50 at 128 px, timed 1.40 ms" in build_verdict(report).next_step
    resolution["slim_pick"] = {"model": "efficientnet_lite0_slim75", "size": 160, "int8_p50_ms": 1.23, "p50_vs_own_size": 0.47}
    step = build_verdict(report).next_step
    assert "1.3 ms budget" in step and "1.23 ms int8 p50, 0.47x" in step
    assert "--student efficientnet_lite0_slim75 --student-size 160 --selection cv" in step
    # A compile that distilled it: deployed, nothing to say; failed the gate, its figures and what could change that.
    trial = {"model": "efficientnet_lite0_slim75", "size": 160, "deployed": True, "max_accuracy_drop": 1.0, "untrained_int8_p50_ms": 1.2,
             "slim": {"accuracy": 0.9, "n": 100}, "full": {"accuracy": 0.95, "n": 100}, "accuracy_on": "on the 100 val images"}
    resolution["slim_trial"] = trial
    step = build_verdict(report).next_step  # deployed, yet its file timed over the budget (1.89 ms): load, said so
    assert "was deployed for the 1.3 ms budget (its graph timed 1.20 ms untrained), but its file timed 1.89 ms" in step
    deployed_artifact(report)["latency_p50_ms"] = 1.25
    assert "budget" not in (build_verdict(report).next_step or "")
    deployed_artifact(report)["latency_p50_ms"] = 1.89
    trial["deployed"] = False
    step = build_verdict(report).next_step
    assert ("scored 90.0% (95% CI 82.6%-94.5%, n=100) (distilled) against the full student's 95.0% (95% CI 88.8%-97.8%, n=100) "
            "on the 100 val images, 5.0 points below") in step
    assert "--selection cv" in step
    trial["accuracy_on"] = "out of fold on the 720 training images"
    assert "--max-accuracy-drop 5.5 to deploy it anyway" in build_verdict(report).next_step
    # ... unless that gate would also pass a smaller input size that meets the budget by itself
    # (flowers12: 128 px at 2.36 points below): the search would keep it, not the slim student.
    row = lambda px, acc, ms: {"size": px, "accuracy": {"accuracy": acc}, "int8_p50_ms": ms}  # noqa: E731
    resolution["sizes"] = [row(224, 0.985, 2.6), row(160, 0.979, 1.4), row(128, 0.95, 1.0)]
    step = build_verdict(report).next_step
    assert "--max-accuracy-drop 5.5 would not deploy it: the size search would then pass 128 px (3.50 points below 224 px" in step
    assert "--student efficientnet_lite0_slim75 --student-size 160 to deploy" in step
    resolution["sizes"][2]["int8_p50_ms"] = 1.35  # over the 1.3 ms budget: no such way round
    assert "--max-accuracy-drop 5.5 to deploy it anyway" in build_verdict(report).next_step


def test_every_accuracy_in_the_page_carries_its_interval_and_n(tmp_path):
    report = make_report(tmp_path / "data", tmp_path, num_classes=4, num_files=6)
    page = render(report, tmp_path)
    # Every accuracy cell of the tables: figure, [low-high] and n.
    cells = re.findall(r"<td class='n'>(\d+\.\d%) <span class='ci'>\[(\d+\.\d%)-(\d+\.\d%)\] n=(\d+)", page)
    assert len(cells) == len(report["artifacts"]) + len(report["models"])
    for value, low, high, n in cells:
        assert float(low[:-1]) <= float(value[:-1]) <= float(high[:-1]) and int(n) == 4 * 6
    assert "95% CI" in build_verdict(report).headline


def test_a_small_test_split_is_called_too_small_in_words(tmp_path):
    report = make_report(tmp_path / "data", tmp_path, num_classes=2, per_class=4)
    for row in report["deployed"]["test_predictions"]:  # teacher identical to the file: no difference at all
        row["keras"]["teacher"] = {"predicted": row["predicted"], "confidence": row["confidence"]}
    text = " ".join(build_verdict(report).comparisons)
    assert "within noise" in text and "too small to separate them" in text


@pytest.mark.parametrize("num_files", [2, 20])
def test_tradeoff_chart_keeps_accuracy_within_0_100_and_names_every_file(tmp_path, num_files):
    report = make_report(tmp_path / "data", tmp_path, num_files=num_files, images=False)
    for a in report["artifacts"]:  # perfect files: the interval touches 100%
        a["test"]["accuracy"] = 1.0
    fig = tradeoff_figure(report)
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert 0 <= low < high <= 100
    assert len(ax.get_legend().get_texts()) == num_files  # model.tflite is its variant, not a 21st point
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_labels_of_points_in_one_spot_do_not_overlap():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(dpi=100)
    texts = [str(i) for i in range(1, 11)]
    offsets = _place_labels(ax, [(320.0, 240.0)] * len(texts), texts)  # the middle of the axes
    plt.close(fig)
    boxes = [(dx, dy, dx + 6.5 * len(t), dy + 10) for (dx, dy), t in zip(offsets, texts)]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)


def test_training_curves_come_from_every_stage_with_history(tmp_path):
    report = make_report(tmp_path / "data", tmp_path, images=False)
    names = {role: [name for name, _ in training_stages(m["training"])] for role, m in report["models"].items()}
    assert names["teacher"] == ["head on frozen features", "fine-tuning the backbone"]
    assert names["student"][-1] == "distillation from the teacher"
    assert names["baseline"][-1] == "the same training on labels alone"
    page = render(report, tmp_path)
    assert page.count("alt='training curves of the") == 3
    # A report from before per-epoch history: no curves, no error.
    for m in report["models"].values():
        for stage in m["training"].values():
            (stage.get("stage") or stage).pop("history")
    assert "training curves" not in render(report, tmp_path)


def test_report_command_reprints_and_compares(tmp_path, capsys):
    from test_cli import run_cli

    a = make_report(tmp_path / "data", tmp_path / "a", images=False)
    b = json.loads(json.dumps(a))
    b["config"]["seed"] = 7
    for row in b["deployed"]["test_predictions"]:
        row["predicted"] = row["true"]  # B gets every image right
    for build, report in (("a", a), ("b", b)):
        (tmp_path / build).mkdir()
        (tmp_path / build / "report.json").write_text(json.dumps(report))
    code, out, _ = run_cli("report", str(tmp_path / "a"), capsys=capsys)
    assert code == 0 and "Next step:" in out and "95% CI" in out
    shutil.copytree(tmp_path / "a", tmp_path / "moved")  # a build copied since its compile is named where it is now
    code, out, _ = run_cli("report", str(tmp_path / "moved"), capsys=capsys)
    assert code == 0 and f"done: {tmp_path / 'moved'}/ holds" in "".join(out.split("\n"))
    code, out, _ = run_cli("report", str(tmp_path / "a"), str(tmp_path / "b"), capsys=capsys)
    assert code == 0 and "settings that differ" in out and "seed" in out
    assert f"On the same {len(a['deployed']['test_predictions'])} test images" in out
    code, _, err = run_cli("report", str(tmp_path / "nowhere"), capsys=capsys)
    assert code == 1 and err.count("\n") == 1 and "nowhere does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("report", str(tmp_path / "empty"), capsys=capsys)
    assert code == 1 and err.count("\n") == 1 and "empty holds no report.json" in err
    # A report.json of another shape (hand-edited, another tool's) is refused in one line, before
    # any of it is printed, naming the field that is wrong.
    for change, field in ((lambda r: r.update(artifacts="x"), '"artifacts"'), (lambda r: r.update(deployed=None), '"deployed"'),
                          (lambda r: r["dataset"].pop("classes"), '"dataset.classes"'), (lambda r: r.update(config=[1]), '"config"'),
                          (lambda r: r["config"].update(seed="abc"), '"config.seed"'), (lambda r: r.update(total_s="x"), '"total_s"')):
        broken = json.loads(json.dumps(a))
        change(broken)
        (tmp_path / "a" / "report.json").write_text(json.dumps(broken))
        code, out, err = run_cli("report", str(tmp_path / "a"), capsys=capsys)
        assert code == 1 and not out and err.count("\n") == 1 and "is not an edgetl compile report" in err and field in err
    (tmp_path / "a" / "report.json").write_text("[1]")
    code, _, err = run_cli("report", str(tmp_path / "a"), capsys=capsys)
    assert code == 1 and "a JSON list, not an object" in err


# -- a real browser ---------------------------------------------------------------------------

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def _chromium(*args, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
@pytest.mark.parametrize("num_classes, num_files", [(2, 2), (50, 20)])
def test_report_opens_in_a_real_browser(tmp_path, num_classes, num_files):
    report = make_report(tmp_path / "data", tmp_path, num_classes=num_classes, num_files=num_files, per_class=3)
    page = render(report, tmp_path)
    assert "<script" not in page and not re.search(r"(src|href)=['\"]?https?:", page)  # self-contained
    (tmp_path / "report.html").write_text(page)
    images = page.count("<img ")
    assert images >= 3 + len(_figures(page))  # charts, confusion matrix, every thumbnail
    with tempfile.TemporaryDirectory() as profile:
        shot = tmp_path / "shot.png"
        result = _chromium("--window-size=1200,2400", f"--screenshot={shot}", (tmp_path / "report.html").as_uri(),
                           profile=Path(profile))
        assert shot.is_file(), result.stderr[-2000:]
        pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
        assert pixels.std() > 20 and (pixels < 128).mean() > 0.01  # not blank: text and pictures drawn
    # Every <img> decodes in the browser: a test-only copy of the page counts the broken ones
    # (the report itself has no script) and Chromium's DOM dump reports the count.
    probe = page.replace("</body>", "<script>window.onload=function(){var bad=0,n=0;for(const i of document.images)"
                         "{n++;if(!(i.complete&&i.naturalWidth>0))bad++;}document.body.setAttribute('data-images',n+'/'+bad);}"
                         "</script></body>")
    (tmp_path / "probe.html").write_text(probe)
    with tempfile.TemporaryDirectory() as profile:
        result = _chromium("--virtual-time-budget=10000", "--dump-dom", (tmp_path / "probe.html").as_uri(), profile=Path(profile))
    found = re.search(r'data-images="(\d+)/(\d+)"', result.stdout)
    assert found, result.stderr[-2000:]
    assert int(found.group(1)) == images and int(found.group(2)) == 0
    # And each inline image is a valid PNG or JPEG outside the browser too.
    for uri in re.findall(r"src='data:image/(?:png|jpeg);base64,([^']+)'", page):
        Image.open(io.BytesIO(base64.b64decode(uri))).verify()


def test_accuracy_figure_reads_test_then_cv():
    assert accuracy_figure(None) is None
    assert accuracy_figure({"test": None, "cv": {"accuracy": 0.9, "n": 100, "ci95": [0.83, 0.94], "folds": 5}}).source == "cv"
    assert accuracy_figure({"test": {"accuracy": 0.5, "images": 10}}).describe().startswith("50.0% (95% CI")


def test_the_page_says_which_candidate_each_model_kept_and_why(tmp_path):
    """One row per model that chose between its probe and its training, the verdict in words."""
    from edgetl.compiler.evaluation.stats import Accuracy, paired_difference

    report = make_report(tmp_path / "data", tmp_path, images=False)
    n = 100
    # Teacher: training one image better than the probe on val, not beyond noise: probe kept.
    close = paired_difference([True] * 81 + [False] * 19, [True] * 80 + [False] * 20)
    report["models"]["teacher"]["training"]["selection"] = {
        "method": f"held-out validation split ({n} images)", "chosen_epochs": 0, "probe_kept": True,
        "estimate": Accuracy(80, n).to_json(), "probe": Accuracy(80, n).to_json(),
        "versus_probe": close.to_json() | {"best_epochs": 3, "verdict": close.verdict("3 epochs of training", "the probe")}}
    # Student: distillation clearly better out of fold: it replaces the probe.
    clear = paired_difference([True] * 95 + [False] * 5, [True] * 75 + [False] * 25)
    report["models"]["student"]["training"]["distillation"]["selection"] = {
        "method": "3-fold cross-validation", "accuracy_by_epoch": [0.75, 0.9, 0.95], "chosen_epochs": 2, "probe_kept": False,
        "estimate": Accuracy(95, n).to_json(), "probe": Accuracy(75, n).to_json(),
        "versus_probe": clear.to_json() | {"best_epochs": 2, "verdict": clear.verdict("2 epochs of training", "the probe")}}
    # The teacher's probe chose to read its pooled block's features too, the student's not.
    report["models"]["teacher"]["training"]["head"] = {"columns": None, "cv_log_loss_by_features": {"final map": 0.056, "final map + block": 0.042}}
    report["models"]["student"]["training"]["head"] = {"columns": 1280, "cv_log_loss_by_features": {"final map": 0.3, "final map + block": 0.31}}
    page = render(report, tmp_path)
    rows = re.findall(r"<tr><td>(teacher|student): [^<]*</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td></tr>", page)
    assert [r[0] for r in rows] == ["teacher", "student"]
    teacher, student = rows
    assert teacher[2].endswith("on the final map + block&#x27;s pooled features (out-of-fold cross-entropy 0.042, against 0.056 on the final map&#x27;s)")
    assert "on the final map&#x27;s pooled features (out-of-fold cross-entropy 0.300, against 0.310" in student[2]
    assert teacher[1].startswith("held-out validation split") and teacher[4] == "the linear probe"
    assert "within noise" in teacher[5] and "not beyond noise" in teacher[5] and teacher[3].startswith("3 epochs: 81.0%")
    assert student[1] == "3-fold cross-validation" and student[4] == "2 epochs of training"
    assert "better than the probe" in student[5] and student[2].startswith("75.0% (")


def test_the_page_prices_each_stage_and_says_how_to_leave_out_the_optional_ones(tmp_path):
    """Issue 15: the ablation and the corruption suite priced in the report."""
    report = make_report(tmp_path / "data", tmp_path, images=False)
    report["timings_s"] = {"data": 2.0, "teacher": 50.0, "student": 20.0, "baseline": 10.0, "export": 8.0,
                           "verify": 4.0, "optimize": 30.0, "package": 1.0, "robustness": 25.0}
    report["total_s"] = 150.0
    report["peak_memory_mb"] = {name: 1024.0 * (3 if name != "data" else 1) for name in report["timings_s"]}
    page = render(report, tmp_path)
    section = page[page.index("<h2>Wall time and memory per stage</h2>"):]
    rows = re.findall(r"<tr><td>(\w+)</td><td>[^<]*</td><td class='n'>([\d.]+) s</td><td class='n'>(\d+)%</td>"
                      r"<td class='n'>([^<]*)</td><td>(.*?)</td></tr>", section)
    assert [r[0] for r in rows] == list(report["timings_s"])
    shares = {name: int(share) for name, _, share, _, _ in rows}
    assert shares["teacher"] == 33 and shares["robustness"] == 17 and shares["baseline"] == 7
    skips = {name: skip for name, _, _, _, skip in rows}
    assert "--no-robustness" in skips["robustness"] and "--no-baseline" in skips["baseline"]
    assert skips["teacher"] == skips["export"] == ""
    peaks = {name: peak for name, _, _, peak, _ in rows}
    assert peaks["data"] == "1.0 GiB" and peaks["teacher"] == "3.0 GiB"
    del report["peak_memory_mb"]  # a report from before the column: the cell stays empty
    assert "peak memory" in render(report, tmp_path) and "GiB</td>" not in render(report, tmp_path)


def test_the_page_says_how_the_model_was_adapted_to_the_device(tmp_path):
    """Issue 14: --adapt's choice, the fitted camera and the methods tried, in report.html."""
    report = make_report(tmp_path / "data", tmp_path, images=False)
    assert "Adaptation to the device" not in render(report, tmp_path)
    camera = {"steps": [["motion_blur", 12.0], ["jpeg", 21.75]], "distance": 0.01, "clean_distance": 0.4, "evaluations": 70,
              "seconds": 90.0, "blend_share": 0.85}
    report["adaptation"] = {
        "method": "camera", "asked": "auto", "why": "the measured default (camera; no --target-val to choose with)",
        "target_images": 306, "clean_val_accuracy_before": 0.98, "int8_calibration": "target images",
        "tried": [{"method": "camera", "seconds": 240.0, "clean_val_accuracy": 0.98, "camera": camera}],
    }
    page = render(report, tmp_path)
    section = page[page.index("<h2>Adaptation to the device's camera</h2>"):]
    assert "<b>camera</b> (--adapt auto)" in section and "306 unlabelled" in section
    assert "motion_blur 12, jpeg 21.75" in section and "85% of the trained weights kept" in section
    camera["steps"] = []
    assert "fit no camera" in render(report, tmp_path)


def test_a_file_worse_than_its_float_student_beyond_noise_is_said_so(tmp_path):
    """The gate judges on val; a loss it did not see (a pruned, clustered file on flowers12: -4.2
    points on test, level on val) must still reach the verdict."""
    report = make_report(tmp_path / "data", tmp_path, num_classes=3, per_class=20)
    rows = report["deployed"]["test_predictions"]
    for i, row in enumerate(rows):  # the float student right on every image, the file wrong on a third
        row["keras"]["student"] = {"predicted": row["true"], "confidence": 0.9}
        wrong = next(c for c in report["dataset"]["classes"] if c != row["true"])
        row["predicted"] = row["true"] if i % 3 else wrong
    text = " ".join(build_verdict(report).comparisons)
    assert "The float student" in text and "is better than model.tflite" in text and "variants/" in text
    for row in rows:  # the same file, level with its float student: nothing to say
        row["keras"]["student"] = {"predicted": row["predicted"], "confidence": 0.9}
    assert "converted from" not in " ".join(build_verdict(report).comparisons)


def _comparison(student_right: int, baseline_right: int, n: int = 40, behind: float | None = 0.0) -> dict:
    from edgetl.compiler.evaluation.stats import paired_difference

    student = [i < student_right for i in range(n)]
    baseline = [i < baseline_right for i in range(n)]
    return {"measured_on": "the held-out test split", "distillation_gain_accuracy": (student_right - baseline_right) / n,
            "distillation_gain_paired": paired_difference(student, baseline).to_json(),
            "student_minus_teacher_accuracy": behind}


def test_distillation_is_called_a_gain_only_beyond_noise():
    from edgetl.compiler.report.facts import distillation_sentence

    small = distillation_sentence(_comparison(31, 30))
    assert small.startswith("distillation made no difference beyond noise on the test split: +2.5 points (95% CI")
    assert "n=40" in small and "gained" not in small
    large = distillation_sentence(_comparison(38, 20, behind=-0.025))
    assert large.startswith("distillation gained 45.0 points on the test split (95% CI +")
    assert large.endswith("the student is 2.5 points below the teacher")
    lost = distillation_sentence(_comparison(20, 38, behind=None))
    assert lost.startswith("distillation lost 45.0 points") and lost.endswith("trained without the teacher")
    # The same model as teacher and student: not "0.0 points above".
    assert distillation_sentence(_comparison(30, 30)).endswith("the student is as accurate as the teacher")


def test_the_artefacts_table_keeps_each_file_name_whole_on_one_line(tmp_path, capsys):
    """An ellipsis made variants/model.fp32.tflite and variants/model.fp32.onnx read alike."""
    from edgetl.compiler.report.summary import print_summary

    report = make_report(tmp_path / "data", tmp_path)
    long_name = "variants/model.fp32.a-long-descriptive-name.tflite"
    report["artifacts"][-1]["file"] = long_name
    print_summary(report)
    out = capsys.readouterr().out
    assert long_name in out and "sparsity" not in out  # nothing pruned: no empty column


def test_the_page_states_distillation_s_gain_even_without_training_charts(tmp_path):
    report = make_report(tmp_path / "data", tmp_path, images=False)
    for model in report["models"].values():
        model["training"] = {}  # no curves, no selection table
    report["distillation"] = _comparison(31, 30)
    assert "Distillation made no difference beyond noise on the test split" in render(report, tmp_path)


def test_the_console_best_val_figure_carries_its_interval_and_n():
    from edgetl.compiler.report.summary import _best_val_cell

    assert _best_val_cell({"top": {"best_val_accuracy": 0.9}, "distillation": {"stage": {"best_val_accuracy": 0.95}}}, 108) == (
        "95.0% [89.6-98.0] n=108")  # the best stage's, as before, now with its Wilson interval
    assert _best_val_cell({}, 108) == "" and _best_val_cell({"top": {"best_val_accuracy": 0.9}}, 0) == ""


def test_a_test_split_holding_copies_of_training_images_is_not_called_unseen(tmp_path):
    report = make_report(tmp_path / "data", tmp_path)
    assert "images the training never saw" in build_verdict(report).measured
    report["dataset"]["test_copies_of_train"] = 2
    measured = build_verdict(report).measured
    assert "never saw" not in measured and "2 of them byte-identical copies of training images" in measured


def test_a_wide_interval_is_given_as_its_bounds_not_a_symmetric_plus_minus(tmp_path, monkeypatch):
    # Wilson's interval is lopsided near 100%: 15 of 15 right is 79.6-100.0%, not "±10.2 points".
    from edgetl.compiler.report import verdict
    from edgetl.compiler.report.facts import Figure

    report = make_report(tmp_path / "data", tmp_path)
    report["models"].pop("baseline", None)
    monkeypatch.setattr(verdict, "deployed_figure", lambda r: Figure(1.0, 15, 0.796, 1.0, "test"))
    monkeypatch.setattr(verdict, "misclassified", lambda r: [])
    monkeypatch.setattr(verdict, "_weakest_class", lambda r: None)
    step = verdict._next_step(report)
    assert "with n=15 the accuracy is only known to lie between 79.6% and 100.0% (a 20.4-point 95% interval)" in step
    assert "±" not in step


def test_a_sentence_that_starts_with_a_file_name_keeps_its_case():
    from edgetl.compiler.report.verdict import _capitalised

    assert _capitalised("model.tflite 97.1% and the teacher 97.5%") == "model.tflite 97.1% and the teacher 97.5%"
    assert _capitalised("the deployed student (float) 96.7%") == "The deployed student (float) 96.7%"


def test_a_file_s_change_from_fp32_and_its_agreement_carry_their_intervals(tmp_path, capsys):
    """Δ vs float is paired on the same images and agreement is a share of them: each gets its
    95% interval in the page, and the console says once how wide they are and which change is
    beyond noise."""
    from edgetl.compiler.evaluation.stats import paired_difference, wilson_interval
    from edgetl.compiler.report.summary import change_noise, print_summary

    report = make_report(tmp_path / "data", tmp_path, num_classes=3, per_class=20)
    n = 60
    fp32 = [True] * n
    level = paired_difference([i != 0 for i in range(n)], fp32)  # one image lost: within noise
    worse = paired_difference([i % 4 != 0 for i in range(n)], fp32)  # 15 lost: beyond noise
    assert not level.significant and worse.significant
    low, high = wilson_interval(59, n)
    # artifacts[0] is model.tflite, a copy of the row of variant artifacts[1]: named once, by its variant.
    for row, change in zip(report["artifacts"][:3], (worse, worse, level)):
        row["accuracy_delta"] = change.difference
        row["accuracy_delta_ci95"] = [change.low, change.high]
        row["parity"] = {"images": n, "top1_agreement": 59 / n, "top1_agreement_ci95": [low, high], "against": "student"}
    page = render(report, tmp_path)
    assert f"{level.difference * 100:+.2f} pt <span class='ci'>[{level.low * 100:+.1f} to {level.high * 100:+.1f}]</span>" in page
    assert f"98.33% <span class='ci'>[{low:.1%}-{high:.1%}] n=60</span>" in page
    line = change_noise(report["artifacts"])
    assert f"±{(worse.high - worse.low) * 50:.1f} points" in line and f"beyond noise: {report['artifacts'][1]['file']};" in line
    assert f"±{(high - low) / 2:.1%} (n=60)" in line
    print_summary(report)
    assert "beyond noise:" in capsys.readouterr().out
    # Older report.json files (no intervals recorded) print as before, with no claim about noise.
    for row in report["artifacts"]:
        row.pop("accuracy_delta_ci95", None)
        row["parity"] = None
    assert change_noise(report["artifacts"]) is None
    from edgetl.compiler.report.html import _agreement, _change

    assert _change(report["artifacts"][2]) == f"{level.difference * 100:+.2f} pt" and _agreement({"top1_agreement": 1.0}) == "100.00%"


def test_two_cross_validated_builds_of_one_folder_are_paired_out_of_fold(tmp_path):
    """No test split in either build: their out-of-fold answers on the same labelled images are
    paired, as two test splits would be; builds of other images still are not."""
    from edgetl.compiler.report.compare import compare_lines

    a = make_report(tmp_path / "data", tmp_path / "a", with_test=False)
    b = make_report(tmp_path / "data", tmp_path / "b", with_test=False)
    paths = [f"{c}/img_{i:03d}.jpg" for c in ("daisy", "tulip") for i in range(60)]

    def answers(wrong: set[int]) -> list[dict]:
        return [{"path": p, "true": p.split("/")[0], "predicted": "rose" if i in wrong else p.split("/")[0]}
                for i, p in enumerate(paths)]

    a["deployed"]["cv_predictions"] = answers(set(range(0, 120, 4)))  # 30 of 120 wrong
    b["deployed"]["cv_predictions"] = answers({0, 8})  # 2 wrong, both also wrong in A
    (line,) = compare_lines(a, b)
    assert line.startswith("Out of fold on the same 120 labelled images") and "B is better than A (+23.3 points" in line
    b["deployed"]["cv_predictions"] = answers(set(range(0, 120, 4)) - {0})  # one image apart
    (line,) = compare_lines(a, b)
    assert "within noise" in line and "cannot separate them" in line
    b["deployed"]["cv_predictions"] = list(reversed(answers(set(range(0, 120, 4)) - {0})))  # matched by path, not order
    assert compare_lines(a, b) == [line]
    other_task = json.loads(json.dumps(b))
    other_task["dataset"]["classes"] = ["bark", "brick"]
    (line,) = compare_lines(a, other_task)
    assert "classify different classes (3 and 2, 0 shared)" in line and "cannot be compared" in line
    b["deployed"]["cv_predictions"] = answers(set())[1:]  # another set of images: not paired
    (line,) = compare_lines(a, b)
    assert line.startswith("The two builds' cross-validated estimates are on different labelled images")

    # The same names and labels, but one photo replaced between the builds: its digest differs, so
    # the two answered other images and are not paired; with every digest equal they are.
    def with_digests(rows, changed=None):
        return [{**r, "digest": f"{i:016x}" if i != changed else "f" * 16} for i, r in enumerate(rows)]

    a["deployed"]["cv_predictions"] = with_digests(answers(set(range(0, 120, 4))))
    b["deployed"]["cv_predictions"] = with_digests(answers({0, 8}), changed=5)
    (line,) = compare_lines(a, b)
    assert line.startswith("The two builds' cross-validated estimates are on different labelled images")
    b["deployed"]["cv_predictions"] = with_digests(answers({0, 8}))
    assert compare_lines(a, b)[0].startswith("Out of fold on the same 120 labelled images")


def test_a_pruned_file_gated_on_its_own_training_images_is_called_unmeasured(tmp_path):
    """Without a test split the gate compares a pruned or QAT file with fp32 on the images their
    fine-tuning trained on (on 60 flowers12 photos it passed a pruned file that lost 8 points on
    60 test photos): the verdict says the check cannot see that."""
    def with_deployed(report, variant):
        deployed = next(a for a in report["artifacts"] if a["file"] == "model.tflite")
        deployed["variant"] = variant
        deployed["gate_accuracy"] = {"split": "train", "accuracy": 1.0, "n": 18, "ci95": [0.82, 1.0]}
        return " ".join(build_verdict(report).comparisons)

    report = make_report(tmp_path / "data", tmp_path, with_test=False)
    text = with_deployed(report, "variants/model.int8-qat-pruned50.tflite")
    assert "fine-tuned by pruning and quantization-aware training on the training images" in text
    assert "A test/ folder" in text
    assert "fine-tuned by" not in with_deployed(report, "variants/model.int8.tflite")  # post-training: nothing trained
    scored = make_report(tmp_path / "data2", tmp_path / "b")  # a test split measures it: no caveat
    assert "fine-tuned by" not in with_deployed(scored, "variants/model.int8-qat-pruned50.tflite")


def test_a_class_name_the_fonts_cannot_draw_prints_no_warning(recwarn):
    """A CJK class name (DejaVu Sans has no glyph for it) once printed matplotlib's warning, with
    its source line, four times into a compile's console."""
    from edgetl.compiler.report.charts import _pyplot, confusion_figure, png_data_uri

    plt = _pyplot()
    fig = confusion_figure([[3, 1], [0, 4]], ["桜 blossom", "Löwenzahn"], "confusion")
    assert png_data_uri(fig).startswith("data:image/png;base64,")
    plt.close(fig)
    assert not [w for w in recwarn if "Glyph" in str(w.message)]
