"""report.html: one self-contained page (images inlined, no scripts, opens offline).

Built from the same dict as report.json, so the page and the JSON can never disagree.
"""

from __future__ import annotations

import html
from pathlib import Path

from edgetl.compiler.data.corruptions import describe_steps
from edgetl.compiler.evaluation.stats import ci95, describe_accuracy
from edgetl.compiler.evaluation.robustness import (
    render_section as render_robustness_section,
)
from edgetl.compiler.report.charts import (
    confusion_chart,
    cross_validation_chart,
    selection_records,
    size_front_chart,
    tradeoff_chart,
    training_chart,
)
from edgetl.compiler.report.facts import (
    accuracy_figure,
    deployed_figure,
    distillation_sentence,
    macro_f1_text,
)
from edgetl.compiler.report.gallery import MAX_THUMBNAILS, misclassified, thumbnail_uri
from edgetl.compiler.report.verdict import build_verdict

from edgetl.atomic import atomic_write_text

HTML_FILE = "report.html"

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { padding: 3px 7px; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f6f6f6; } td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.chosen { background: #eaf6ea; font-weight: 600; } .muted { color: #777; } .warn { color: #a60; }
.box { background: #f7f9fc; border: 1px solid #dde5f0; padding: 0.8em 1em; border-radius: 6px; }
img.chart { max-width: 100%; display: block; margin: 0.5em 0; }
.verdict { background: #f7f9fc; border: 1px solid #dde5f0; border-left: 6px solid #3a7bd5; padding: 0.6em 1.2em; border-radius: 6px; }
.verdict .headline { font-size: 1.15em; font-weight: 600; } .verdict .next { background: #fff8e1; padding: 0.4em 0.6em; border-radius: 4px; }
.ci { color: #777; font-size: 0.85em; white-space: nowrap; display: block; } h3 { font-size: 1em; margin: 1.2em 0 0.3em; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
.group { display: inline-block; vertical-align: top; margin: 0 18px 6px 0; }
figure { margin: 0; width: 140px; font-size: 12px; border: 1px solid #e3e3e3; border-radius: 4px; padding: 5px; background: #fff; }
figure img { display: block; max-width: 128px; max-height: 128px; margin: 0 auto 4px; }
figure.flagged { border: 2px solid #d9822b; background: #fff6ec; }
.flag { color: #b35c00; font-weight: 600; } .path { color: #888; font-size: 10px; word-break: break-all; }
.noimg { height: 60px; color: #999; text-align: center; line-height: 60px; background: #f4f4f4; }
.scroll { overflow: auto; max-height: 1200px; border: 1px solid #eee; } img.cm { display: block; max-width: 100%; } img.cm.big { max-width: none; } /* 25+ classes: full size, scrolled */
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


def _change(row: dict) -> str:
    """A file's accuracy change from its fp32 file, with the paired 95% interval when recorded."""
    delta, span = row.get("accuracy_delta"), row.get("accuracy_delta_ci95")
    if delta is None or not span:
        return _points(delta)
    return f"{_points(delta)} <span class='ci'>[{span[0] * 100:+.1f} to {span[1] * 100:+.1f}]</span>"


def _agreement(parity: dict) -> str:
    """Top-1 agreement with the file's source, with its 95% interval and n when recorded."""
    span = parity.get("top1_agreement_ci95")
    if not span:
        return _pct(parity.get("top1_agreement"))
    return (f"{_pct(parity.get('top1_agreement'))} <span class='ci'>[{span[0]:.1%}-{span[1]:.1%}] "
            f"n={parity.get('images')}</span>")


def _acc(entry) -> str:
    """An accuracy cell: the figure, its 95% interval and n (cross-validated ones say so)."""
    figure = accuracy_figure(entry)
    if figure is None:
        return "<span class='muted'>not measured</span>"
    return (f"{figure.accuracy:.1%} <span class='ci'>[{figure.low:.1%}-{figure.high:.1%}] n={figure.n}"
            + (" cv" if figure.source == "cv" else "") + "</span>")


def _acc_json(accuracy: dict) -> str:
    """An accuracy cell from an Accuracy record (compiler/evaluation/stats.py): figure, interval, n."""
    low, high = accuracy["ci95"]
    return f"{accuracy['accuracy']:.1%} <span class='ci'>[{low:.1%}-{high:.1%}] n={accuracy['n']}</span>"


def _verdict_section(report: dict) -> list[str]:
    verdict = build_verdict(report)
    parts = ["<div class='verdict'>", f"<p class='headline'>{_e(verdict.headline)}</p>"]
    parts += [f"<p>{_e(line)}</p>" for line in verdict.comparisons]
    parts.append(f"<p class='next'><b>Next step:</b> {_e(verdict.next_step or 'nothing in these figures stands out.')}</p>")
    parts.append(f"<p class='muted'>{_e(verdict.measured)}</p>")
    target = report.get("target")
    if target:
        parts.append(f"<p class='muted'>Target: {_e(target['name'])}: {_e(target['summary'])}.</p>")
    why = report["deployed"].get("why")
    if why:
        parts.append(f"<details><summary>Why these files were chosen</summary><p>{_e(why)}</p></details>")
    parts.append("</div>")
    return parts


def _gallery_section(report: dict) -> list[str]:
    rows = report["deployed"].get("test_predictions")
    parts = ["<h2 id='mistakes'>What model.tflite gets wrong</h2>"]
    if not rows:
        reason = ("this compile had no test split" if deployed_figure(report) is None or deployed_figure(report).source == "cv"
                  else "this report.json predates per-image answers")
        parts.append(f"<p class='muted'>No gallery: {_e(reason)}.</p>")
        return parts
    groups = misclassified(report)
    wrong = sum(len(g.mistakes) for g in groups)
    if not wrong:
        parts.append(f"<p>None: model.tflite classifies all {len(rows)} test images correctly.</p>")
        return parts
    flagged = sum(m.possible_label_error for g in groups for m in g.mistakes)
    parts.append(
        f"<p>{wrong} of {len(rows)} test images, grouped by <i>true &rarr; predicted</i> class, the most confident mistake "
        "first. <span class='flag'>possible label error</span>: the file is confident"
        + (" and the other trained models give the same class" if any(m.agreeing_models for g in groups for m in g.mistakes)
           or len(report["models"]) > 1 else "")
        + f"; look at the photo before trusting its label ({flagged} flagged).</p>"
    )
    root = report["dataset"]["root"]
    shown = 0
    for g in groups:
        parts.append(f"<div class='group'><h3>{_e(g.true)} &rarr; {_e(g.predicted)} <span class='muted'>({len(g.mistakes)})</span></h3><div class='grid'>")
        for m in g.mistakes:
            uri = thumbnail_uri(root, m.path) if shown < MAX_THUMBNAILS else None
            shown += uri is not None
            picture = f"<img alt='{_e(m.path)}' src='{uri}'>" if uri else "<div class='noimg'>image not shown</div>"
            flag = "<br><span class='flag'>possible label error</span>" if m.possible_label_error else ""
            parts.append(
                f"<figure class='{'flagged' if m.possible_label_error else ''}'>{picture}<figcaption>"
                f"true: <b>{_e(m.true)}</b><br>predicted: <b>{_e(m.predicted)}</b> ({m.confidence:.0%}){flag}"
                f"<br><span class='path'>{_e(m.path)}</span></figcaption></figure>"
            )
        parts.append("</div></div>")
    return parts


def _selection_table(report: dict) -> list[str]:
    """Each trained model's two candidates (its linear probe, its best training) and which won, why."""
    # numpy only: no TensorFlow
    from edgetl.compiler.training.crossval import kept_because
    from edgetl.compiler.training.probe import features_name

    rows = []
    for role, model in report["models"].items():
        head = model.get("training", {}).get("head") or {}
        read = _probe_features(head)
        refit = head.get("refit")
        for stage, selection in selection_records(model.get("training", {})):
            probe, versus = selection.get("probe") or {}, selection.get("versus_probe")
            best_recipe = f" ({versus['best_recipe']})" if versus and versus.get("best_recipe") else ""
            trained = (f"{versus['best_epochs']} epochs{best_recipe}: {_accuracy_cell(versus, probe)}"
                       if versus and versus.get("best_epochs") else "no epoch beat the probe")
            if selection.get("recipes"):
                # "; ": a recipe's name has commas of its own ("top, learning rate 0.0001").
                trained += f" (recipes tried: {'; '.join(selection['recipes'])})"
            won = "the linear probe" if selection.get("probe_kept") else (
                f"{selection.get('chosen_epochs')} epochs of training" + (f" ({selection['recipe']})" if selection.get("recipe") else ""))
            if selection.get("probe_kept") and refit:
                reads = f", {features_name(refit.get('columns'))}" if head.get("cv_log_loss_by_features") else ""
                won += f", then refit on train + val ({refit['images']} images, C={refit['C']:g}{reads} by {refit['folds']}-fold CV)"
            why = versus["verdict"] if versus and versus.get("best_epochs") else "training never scored above the probe"
            if versus and versus.get("best_epochs") and selection.get("probe_kept"):
                why += ": " + kept_because(versus)
            rows.append(f"<tr><td>{_e(role)}: {_e(stage)}</td><td>{_e(selection.get('method', ''))}</td>"
                        f"<td>{_e(_describe(probe) + read)}</td><td>{_e(trained)}</td><td>{_e(won)}</td><td>{_e(why)}</td></tr>")
    if not rows:
        return []
    return ["<table><tr><th>model</th><th>chosen by</th><th>linear probe</th><th>best training</th><th>deployed</th>"
            "<th>why</th></tr>", *rows, "</table>"]


def _probe_features(head: dict) -> str:
    """Which pooled features the probe reads, where its cross-validation chose between the final
    map's alone and the final map's with a block's (ModelConfig.pooled_block)."""
    losses = head.get("cv_log_loss_by_features") or {}
    if len(losses) < 2:
        return ""
    from edgetl.compiler.training.probe import (
        features_name,  # numpy only: no TensorFlow
    )

    chosen = features_name(head.get("columns"))
    other = next(name for name in losses if name != chosen)
    return (f"; on the {chosen}'s pooled features (out-of-fold cross-entropy {losses[chosen]:.3f}, "
            f"against {losses[other]:.3f} on the {other}'s)")


def _describe(accuracy: dict) -> str:
    if not accuracy or not accuracy.get("n"):
        return "n/a"
    low, high = accuracy["ci95"]
    return f"{accuracy['accuracy']:.1%} ({low:.1%}-{high:.1%}, n={accuracy['n']})"


def _accuracy_cell(versus: dict, probe: dict) -> str:
    """The best epoch's accuracy on the selection images: the probe's plus the paired difference."""
    n = versus.get("n") or probe.get("n") or 0
    if not n or not probe:
        return "n/a"
    return describe_accuracy(probe["accuracy"] + versus["difference"], n).replace("95% CI ", "")


def _training_section(report: dict) -> list[str]:
    charts = [(role, training_chart(role, m.get("training", {}))) for role, m in report["models"].items()]
    charts = [(role, uri) for role, uri in charts if uri]
    curves = [(role, cross_validation_chart(role, m.get("training", {}))) for role, m in report["models"].items()]
    curves = [(role, uri) for role, uri in curves if uri]
    selections = _selection_table(report)
    if not charts and not curves and not selections and not report.get("distillation"):
        return []
    parts = ["<h2>Training</h2>"]
    if report.get("distillation"):
        sentence = distillation_sentence(report["distillation"])
        parts.append(f"<p>{_e(sentence[0].upper() + sentence[1:])}.</p>")
    if selections:
        parts.append("<p class='muted'>Every trained model has two candidates: its linear probe (frozen backbone, "
                     "logistic-regression head) and its fine-tuning or distillation. Training replaces the probe only "
                     "when its paired gain on the images that choose is beyond noise (95% interval above zero).</p>")
        parts += selections
    if curves:
        parts.append("<p class='muted'>Chosen by cross-validation: accuracy on the held-out folds after each epoch of "
                     "training, epoch 0 being the linear probe; training replaces the probe only when it is better "
                     "beyond noise, and the deployed model is then trained on all images for the chosen epochs.</p>")
        parts += [f"<img class='chart' alt='cross-validation curve of the {_e(role)}' src='{uri}'>" for role, uri in curves]
        folds = _fold_teachers_sentence(report)
        if folds:
            parts.append(f"<p class='muted'>{_e(folds)}</p>")
    if charts:
        parts.append("<p class='muted'>Loss and accuracy per epoch on the training images (augmented) and "
                     "the validation split; the dashed line marks the epoch whose weights were kept (early stopping on val "
                     "accuracy).</p>")
        parts += [f"<img class='chart' alt='training curves of the {_e(role)}' src='{uri}'>" for role, uri in charts]
    return parts


def _fold_teachers_sentence(report: dict) -> str | None:
    """What each fold of the student's cross-validation was distilled from."""
    folds = report["models"].get("teacher", {}).get("training", {}).get("fold_teachers")
    if not folds or not report["models"].get("student", {}).get("training", {}).get("distillation", {}).get("selection"):
        return None
    if all(fold["epochs"] == 0 for fold in folds):
        which = "its linear probe in every fold"
    else:
        which = "; ".join(f"fold {i}: " + ("its probe" if fold["epochs"] == 0 else f"{_epochs(fold['epochs'])} ({fold['recipe']})")
                          for i, fold in enumerate(folds, start=1))
    return ("Each fold of the student's cross-validation was distilled from the teacher trained on the same fold, "
            f"at the recipe and epochs the teacher's rule chose without that fold's images: {which}.")


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _student_size_section(report: dict) -> list[str]:
    """--student-size auto: every size tried, with the probe's accuracy and the int8 file's p50."""
    choice = report["models"].get("student", {}).get("training", {}).get("resolution")
    if not choice:
        return []
    trial = choice.get("slim_trial")
    title = (f"Student: {_e(trial['model'])} at {trial['size']} px (channel-pruned: no input size met the latency budget)"
             if trial and trial["deployed"] else f"Student input size: {choice['chosen']} px")
    parts = [f"<h2>{title}</h2><p>{_e(choice['why'])}.</p>"
             f"<p class='muted'>Each size: the frozen ImageNet backbone at that size with its linear probe, scored by "
             f"{_e(choice['accuracy_on'])}; its int8 file timed at batch 1 with {choice['threads']} threads on the machine "
             "that compiled, all sizes interleaved. Distillation then trained the chosen size only.</p>",
             "<table><tr><th>size</th><th>probe accuracy [95% CI]</th><th>vs own size, paired [95% CI]</th>"
             "<th>int8 p50</th><th>vs own size</th><th>int8 size</th><th>gate</th></tr>"]
    for row in choice["sizes"]:
        versus = row.get("vs_own_size")
        paired = (f"{_points(versus['difference'])} [{_points(versus['ci95'][0])}, {_points(versus['ci95'][1])}]"
                  if versus else "")
        parts.append(f"<tr class='{'chosen' if row['size'] == choice['chosen'] else ''}'><td>{row['size']} px</td>"
                     f"<td class='n'>{_acc({'cv': row['accuracy']})}</td><td class='n'>{paired}</td><td class='n'>{_ms(row['int8_p50_ms'])}</td>"
                     f"<td class='n'>{row['p50_vs_own_size']:.2f}x</td><td class='n'>{_mb(row['int8_mb'] * 1e6)}</td>"
                     f"<td>{_e(row['gate'])}</td></tr>")
    parts.append("</table>")
    if choice.get("timing_note"):
        parts.append(f"<p class='muted'>Timing: {_e(choice['timing_note'])}.</p>")
    slim = choice.get("slim_options") or []
    if slim:  # no size met --max-latency-ms: the channel-pruned variants, timed untrained
        parts.append("<p>No size within the accuracy gate met the latency budget, so the student's channel-pruned variants "
                     "were timed too: untrained int8 graphs (speed does not depend on the weights), paired with the own "
                     "size's file. A probe cannot tell what the cut costs in accuracy, so the widest one within the budget "
                     "is distilled after the full student and gated against it.</p>"
                     "<table><tr><th>model</th><th>size</th><th>int8 p50</th><th>vs own size</th><th>int8 size</th></tr>")
        parts += [f"<tr><td>{_e(o['model'])}</td><td>{o['size']} px</td><td class='n'>{_ms(o['int8_p50_ms'])}</td>"
                  f"<td class='n'>{o['p50_vs_own_size']:.2f}x</td><td class='n'>{_mb(o['int8_mb'] * 1e6)}</td></tr>" for o in slim]
        parts.append("</table>")
    if trial:  # compiler/stages/slim.py: the pick distilled and gated
        versus = trial["difference"]
        parts.append(f"<h3>Channel-pruned student: {_e(trial['model'])} at {trial['size']} px "
                     f"{'deployed' if trial['deployed'] else 'not deployed'}</h3><p>{_e(trial['why'])}.</p>"
                     f"<table><tr><th>student</th><th>accuracy [95% CI] {_e(trial['accuracy_on'])}</th>"
                     "<th>slim vs full, paired [95% CI]</th></tr>"
                     f"<tr class='{'chosen' if trial['deployed'] else ''}'><td>{_e(trial['model'])}, {trial['size']} px "
                     f"({_e(trial.get('trained_as', 'distilled'))})</td>"
                     f"<td class='n'>{_acc_json(trial['slim'])}</td>"
                     f"<td class='n'>{_points(versus['difference'])} [{_points(versus['ci95'][0])}, {_points(versus['ci95'][1])}]</td></tr>"
                     f"<tr class='{'' if trial['deployed'] else 'chosen'}'><td>full student, {choice['chosen']} px</td>"
                     f"<td class='n'>{_acc_json(trial['full'])}</td><td></td></tr></table>"
                     f"<p class='muted'>The slim student's distillation took {trial['seconds']:.0f} s of the student stage.</p>")
    chart = size_front_chart(choice)
    if chart:
        parts.append(f"<img class='chart' alt='probe accuracy against int8 p50 for each student input size' src='{chart}'>")
    return parts


def _adaptation_section(report: dict) -> list[str]:
    """What --adapt did to the deployed model (compiler/training/adapt.py's report), in words."""
    adaptation = report.get("adaptation")
    if not adaptation:
        return []
    parts = [f"<h2>Adaptation to the device's camera</h2><p><b>{_e(adaptation['method'])}</b> "
             f"(--adapt {_e(adaptation['asked'])}): {_e(adaptation['why'])}. {adaptation['target_images']} unlabelled "
             f"device images; int8 calibrated on the {_e(adaptation['int8_calibration'])}.</p>"]
    chosen = next((r for r in adaptation["tried"] if r["method"] == adaptation["method"]), {})
    camera = chosen.get("camera")
    if camera is not None:
        steps = describe_steps(camera["steps"])
        if steps:
            parts.append(f"<p>Fitted camera (no labels; batch-norm statistics of the device images matched from clean "
                         f"training images): {_e(steps)}. Trained through it, then "
                         f"{camera.get('blend_share', 1.0):.0%} of the trained weights kept (the largest share that loses no "
                         "clean validation image).</p>")
        else:
            parts.append("<p>The device images fit no camera (they look like the training images to the model): "
                         "nothing was trained.</p>")
    parts.append("<table><tr><th>method</th><th>clean validation accuracy</th><th>labelled device images (--target-val)</th>"
                 "<th>time</th></tr>")
    before = adaptation.get("clean_val_accuracy_before")
    n = adaptation.get("clean_val_images")

    def clean(accuracy):  # reports from before clean_val_images was written: the bare figure
        return _pct(accuracy) if accuracy is None or not n else _acc_json(
            {"accuracy": accuracy, "n": n, "ci95": ci95(accuracy, n)})

    if before is not None:
        parts.append(f"<tr><td>(before adapting)</td><td class='n'>{clean(before)}</td><td></td><td></td></tr>")
    for row in adaptation["tried"]:
        parts.append(f"<tr class='{'chosen' if row['method'] == adaptation['method'] else ''}'><td>{_e(row['method'])}</td>"
                     f"<td class='n'>{clean(row.get('clean_val_accuracy'))}</td><td class='n'>{_e(row.get('target_val', ''))}</td>"
                     f"<td class='n'>{row['seconds']:.0f} s</td></tr>")
    parts.append("</table>")
    return parts


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
    parts += _verdict_section(report)
    parts += _gallery_section(report)

    # Artefacts
    parts.append("<h2>Files: accuracy, size and speed</h2><table><tr>"
                 + "".join(f"<th>{h}</th>" for h in ("file", "runtime", "precision", "sparsity", "accuracy [95% CI]",
                                                     "&Delta; vs float", "size", "gzip", "latency p50", "top-1 agreement"))
                 + "</tr>")
    for a in report["artifacts"]:
        parity = a.get("parity") or {}
        parts.append(
            f"<tr class='{'chosen' if a['file'] in (chosen, deployed.get('onnx')) else ''}'>"
            f"<td>{_e(a['file'])}</td><td>{_e(a['runtime'])}</td><td>{_e(a.get('precision', ''))}</td>"
            f"<td class='n'>{_pct(a.get('sparsity')) if a.get('sparsity') else ''}</td>"
            f"<td class='n'>{_acc(a)}</td>"
            f"<td class='n'>{_change(a)}</td>"
            f"<td class='n'>{_mb(a['size_bytes'])}</td><td class='n'>{_mb(a.get('gzip_bytes'))}</td>"
            f"<td class='n'>{_ms(a.get('latency_p50_ms'))}</td>"
            + (f"<td class='n' title=\"against the {_e(parity.get('against', 'float Keras model'))}\">" if parity else "<td class='n'>")
            + f"{_agreement(parity) if parity else '(reference)'}</td></tr>"
        )
    # Without a test split the accuracy cells are empty and the change is on the training images,
    # which calibrated int8: how far a file moved from fp32, not what it costs on unseen photos.
    delta_on = ("the test images" if any(a.get("test") for a in report["artifacts"]) else
                "the training images (there is no test split): how far each file moved from fp32, not accuracy,")
    parts.append(f"</table><p class='muted'>&Delta; vs float is on {delta_on} with the "
                 "paired 95% interval (Newcombe): a change whose interval holds zero is within noise. Top-1 agreement "
                 "is with the Keras model each file was converted from (for a pruned file, the pruned model), with "
                 "its 95% Wilson interval. Latency is measured on the compiling machine.</p>")
    figures = [accuracy_figure(a) for a in report["artifacts"]]
    widest = max(((f.high - f.low) * 50 for f in figures if f), default=0)
    if widest > 2:
        parts.append(f"<p>With these test images each accuracy is known only to within about &plusmn;{widest:.1f} points: "
                     "files whose intervals overlap cannot be ranked by accuracy on this split.</p>")
    chart = tradeoff_chart(report)
    if chart:
        parts.append(f"<img class='chart' alt='accuracy versus latency' src='{chart}'>")

    # Models
    parts.append("<h2>Models</h2><table><tr><th>role</th><th>model</th><th>input</th><th>params</th><th>MACs</th>"
                 "<th>accuracy [95% CI]</th><th>macro F1</th><th>cached</th></tr>")
    for role, m in report["models"].items():
        parts.append(f"<tr><td>{_e(role)}</td><td>{_e(m['model'])}</td><td class='n'>{m['input_size']} px</td>"
                     f"<td class='n'>{m['params'] / 1e6:.2f}M</td><td class='n'>{m['macs'] / 1e6:.0f}M</td>"
                     f"<td class='n'>{_acc(m)}</td><td class='n'>{macro_f1_text(m)}</td>"
                     f"<td>{'yes' if m.get('cached') else ''}</td></tr>")
    parts.append("</table>")
    parts += _training_section(report)
    parts += _student_size_section(report)

    # Per class + confusion matrix of the deployed file
    deployed_row = next((a for a in report["artifacts"] if a["file"] == chosen), None)
    if deployed_row and deployed_row.get("test"):
        parts.append(f"<h2>Per class: {_e(chosen)}</h2><table><tr><th>class</th><th>precision</th><th>recall</th>"
                     "<th>F1</th><th>test images</th></tr>")
        for row in deployed_row["test"]["per_class"]:
            parts.append(f"<tr><td>{_e(row['class'])}</td><td class='n'>{row['precision']:.3f}</td>"
                         f"<td class='n'>{row['recall']:.3f}</td><td class='n'>{row['f1']:.3f}</td>"
                         f"<td class='n'>{row['support']}</td></tr>")
        parts.append("</table>")
    if deployed_row and deployed_row.get("test"):
        test = deployed_row["test"]
        title = f"{chosen} ({deployed_row.get('precision', '')}) on the test split: accuracy {describe_accuracy(test['accuracy'], test['images'])}"
        uri = confusion_chart(deployed_row["test"]["confusion_matrix"], ds["classes"], title)
        parts.append(f"<h2>Confusion matrix: {_e(chosen)} on the test split</h2><p class='muted'>Rows: true class; "
                     "columns: predicted. Blue: the share of each true class classified right; red: mistakes, on their "
                     "own scale; figures: image counts (while the cells hold them).</p>"
                     f"<div class='scroll'><img class='cm{' big' if len(ds['classes']) > 25 else ''}' alt='confusion matrix' src='{uri}'></div>")

    # Data
    counts = ds["counts"]
    parts.append("<h2>Data</h2><p>" + _e(ds["root"]) + f": {len(ds['classes'])} classes; "
                 + ", ".join(f"{s} {sum(c.values())}" for s, c in counts.items()) + " images.</p>")
    for warning in ds.get("warnings", []):
        parts.append(f"<p class='warn'>warning: {_e(warning)}</p>")
    if ds.get("skipped"):
        parts.append("<p>Skipped files:</p><ul>" + "".join(
            f"<li><code>{_e(s['path'])}</code>: {_e(s['reason'])}</li>" for s in ds["skipped"]) + "</ul>")

    parts += _adaptation_section(report)
    parts.append(render_robustness_section(report))
    parts += _wall_time_section(report)
    parts.append("</body></html>")
    return "\n".join(parts)


def _wall_time_section(report: dict) -> list[str]:
    """Each stage's wall time and share of the compile, what it does, and for an optional one the
    option that leaves it out: what the ablation and the corruption suite cost, priced."""
    from edgetl.compiler.stages import STAGES

    declared = {stage.name: stage for stage in STAGES}
    total = report.get("total_s") or sum(report["timings_s"].values()) or 1.0
    peaks = report.get("peak_memory_mb") or {}  # absent from reports written before it existed
    rows = []
    for name, seconds in report["timings_s"].items():
        stage = declared.get(name)
        skip = f"optional: <code>{_e(stage.skip_with)}</code> leaves it out" if stage and stage.skip_with else ""
        peak = f"{peaks[name] / 1024:.1f} GiB" if name in peaks else ""
        rows.append(f"<tr><td>{_e(name)}</td><td>{_e(stage.does if stage else '')}</td><td class='n'>{seconds:.1f} s</td>"
                    f"<td class='n'>{seconds / total:.0%}</td><td class='n'>{peak}</td><td>{skip}</td></tr>")
    note = ("<p class='muted'>Peak memory: the compile process's largest resident memory so far when the stage ended; "
            "the stage where it rises is the one that needed it.</p>") if peaks else ""
    return ["<h2>Wall time and memory per stage</h2>", f"<p>Total {total:.0f} s.</p>", note,
            "<table><tr><th>stage</th><th>what it does</th><th>wall time</th><th>share</th><th>peak memory</th><th></th></tr>"
            + "".join(rows) + "</table>"]


def write_html_report(report: dict, out: Path) -> Path:
    path = Path(out) / HTML_FILE
    atomic_write_text(path, render(report, out))
    return path
