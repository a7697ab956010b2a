"""What the keep-the-probe rule buys: the compile's choice against the best point estimate.

    python -m edgetl.benchmarks.selection_rule --data ../shared/datasets/flowers12 --work WORK
        [--shots 5,10] [--seeds 0,1,2] [--teacher efficientnet_lite2] [--student efficientnet_lite0]
        [-- EXTRA COMPILE OPTIONS]

On small data edgetl chooses by cross-validation how many epochs of fine-tuning (teacher) and
distillation (student) to train, and replaces the frozen-backbone probe only when the best
number of epochs beats it beyond noise (compiler/training/crossval.choose_recipe). This script
measures that rule on a fixed test split. For each setting (N training images per class, drawn
with the seed as in benchmarks/fewshot.py, the full test/ kept for scoring) it runs two compiles
as a user would (fresh processes, `--quantize int8 --no-baseline`):

- rule: `edgetl compile` as shipped;
- point: the same compile, with choose_recipe taking the most accurate number of epochs out of
  fold even when its gain over the probe is within noise (the rule switched off, for each fold's
  teacher too; no setting changes). It has its own stage cache, since its stages' results differ under the same keys.

Training here is not bit-for-bit repeatable (the same seed gave different out-of-fold curves in
two processes), so the point compile's own cross-validation curves differ from the rule
compile's: the comparison is of the two rules as a user would get them, each with its run-to-run
noise. When the rule's compile shows that the point estimate would have chosen the same epochs
for both models (report.json's versus_probe.best_epochs), the point compile is not run and the
setting counts as the same recipe (marked so in the table). Each deployed model.tflite is scored
on test/ in LiteRT; the script prints both accuracies, their paired difference (point - rule,
Newcombe 95% interval), each compile's choices and wall time, and the mean over seeds. Results
go to WORK/selection_rule.json, and a rerun skips the settings already there.

Only the cross-validated path is measured: every setting must stay below the compile's
--cv-below (600 images by default), where choose_recipe decides.
"""

from __future__ import annotations

import functools
import json
import sys

import numpy as np
from edgetl.benchmarks.fewshot import (
    add_setting_arguments,
    benchmark_arguments,
    compile_command,
    deployed_correct,
    make_folder,
    run_logged,
    subset,
)
from edgetl.compiler.evaluation.stats import (
    Accuracy,
    accuracy_span,
    paired_difference,
    points_span,
)

POINT_CHILD = "--compile-with-point-estimate-rule"


def _selections(report: dict) -> dict[str, dict]:
    """The cross-validated choices in a compile's report.json, by model."""
    models = report["models"]
    found = {"teacher": models.get("teacher", {}).get("training", {}).get("selection")}
    found["student"] = (models.get("student") or {}).get("training", {}).get("distillation", {}).get("selection")
    return {k: v for k, v in found.items() if isinstance(v, dict)}


def _describe(selections: dict[str, dict]) -> str:
    parts = []
    for model, s in selections.items():
        vs = s["versus_probe"]
        parts.append(f"{model} {s['chosen_epochs']} epochs (best {vs['best_epochs']}, "
                     f"{100 * vs['difference']:+.1f} pt out of fold{', beyond noise' if vs['significant'] else ''})")
    return "; ".join(parts)


def compile_with_point_estimate_rule(argv: list[str]) -> None:
    """The child process of the `point` arm: edgetl's CLI with the rule switched off."""
    from edgetl.compiler.training import crossval, cv_training

    from edgetl import cli

    cv_training.choose_recipe = functools.partial(crossval.choose_recipe, gain_beyond_noise=False)
    cv_training.fold_choices = functools.partial(crossval.fold_choices, gain_beyond_noise=False)
    cli.main(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [POINT_CHILD]:
        return compile_with_point_estimate_rule(argv[1:])
    parser, argv, extra = benchmark_arguments(argv, __doc__)
    add_setting_arguments(parser, shots="5,10")
    args = parser.parse_args(argv)
    if "all" in args.shots.split(","):
        parser.error("--shots takes images per class; all of train/ is chosen on a val split, not by this rule")
    from edgetl.compiler.data.datasets import scan_dataset

    data = args.data.resolve()
    dataset = scan_dataset(data, selection="holdout", val_fraction=0.0, test_fraction=0.0)
    if not dataset.splits["test"]:
        sys.exit(f"error: {data} has no test/ folder; the benchmark scores on a fixed test split")
    y_train = np.array([s.label for s in dataset.splits["train"]])
    args.work.mkdir(parents=True, exist_ok=True)
    results_file = args.work / "selection_rule.json"
    def key(r: dict) -> tuple:
        return r["shots"], r["seed"], r.get("teacher", "efficientnet_lite2"), r.get("student", "efficientnet_lite0")

    done = {key(r): r for r in json.loads(results_file.read_text())} if results_file.is_file() else {}
    wanted = [(shots, int(seed), args.teacher, args.student) for shots in args.shots.split(",") for seed in args.seeds.split(",")]

    for shots in args.shots.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            if (shots, seed, args.teacher, args.student) in done:
                continue
            chosen = subset(y_train, int(shots), seed)
            folder = make_folder(dataset, chosen, args.work / "data" / f"shots{shots}-seed{seed}")
            row = {"shots": shots, "seed": seed, "train_images": len(chosen), "teacher": args.teacher, "student": args.student}
            for arm in ("rule", "point"):
                out = args.work / "out" / arm / f"shots{shots}-seed{seed}"
                if arm == "point" and not row["rule"]["selection"]:
                    sys.exit(f"error: the rule's compile recorded no cross-validated choice ({out.parent.parent / 'rule'}); nothing to compare")
                if arm == "point" and all(s["chosen_epochs"] == s["versus_probe"]["best_epochs"] for s in row["rule"]["selection"].values()):
                    row["point"] = row["rule"] | {"same_recipe": True, "wall_s": 0.0}
                    print("  point: the same choices as the rule's compile; not run", flush=True)
                    continue
                entry = [sys.executable, "-m", "edgetl.benchmarks.selection_rule", POINT_CHILD] if arm == "point" else None
                command = compile_command(folder, out, args.teacher, args.student, seed, args.work / f"cache-{arm}", extra, entry)
                print(f"[{shots} per class, seed {seed}, {arm}] {' '.join(command)}", flush=True)
                log = args.work / f"compile-{arm}-shots{shots}-seed{seed}.log"
                code, wall = run_logged(command, log)
                if code != 0:
                    sys.exit(f"error: the {arm} compile failed (exit {code}); see {log}")
                report = json.loads((out / "report.json").read_text())
                if report["dataset"].get("selection") != "cv":
                    sys.exit(f"error: {shots} per class is not chosen by cross-validation (see --cv-below); the rule is not measured")
                correct = deployed_correct(out, dataset)
                row[arm] = {"correct": correct.astype(int).tolist(), "accuracy": Accuracy(int(correct.sum()), len(correct)).to_json(),
                            "selection": _selections(report), "wall_s": round(wall, 1)}
                print(f"  {arm}: {Accuracy(int(correct.sum()), len(correct)).describe()}; {_describe(row[arm]['selection'])}; "
                      f"compile {wall:.0f} s", flush=True)
            diff = paired_difference(row["point"]["correct"], row["rule"]["correct"])
            row["difference"] = diff.to_json()
            print(f"  {diff.verdict('point estimate', 'rule')}", flush=True)
            done[key(row)] = row
            results_file.write_text(json.dumps(list(done.values()), indent=1))
    print_table([done[k] for k in wanted if k in done])


def print_table(rows: list[dict]) -> None:
    print("\nshots  seed  rule (95% CI)            point estimate (95% CI)   point - rule (95% CI)")
    for r in rows:
        a, b, d = r["rule"]["accuracy"], r["point"]["accuracy"], r["difference"]
        same = "   (same recipe)" if r["point"].get("same_recipe") else ""
        print(f"{r['shots']:>5}  {r['seed']:>4}  {accuracy_span(a['accuracy'], a['ci95']):<23}  "
              f"{accuracy_span(b['accuracy'], b['ci95']):<24}  {points_span(d['difference'], d['ci95'])}{same}")
        for arm in ("rule", "point"):
            print(f"{'':13}{arm}: {_describe(r[arm]['selection'])}")
    print("\nmean over seeds:")
    for shots in dict.fromkeys(r["shots"] for r in rows):
        group = [r for r in rows if r["shots"] == shots]
        rule = np.mean([r["rule"]["accuracy"]["accuracy"] for r in group])
        point = np.mean([r["point"]["accuracy"]["accuracy"] for r in group])
        print(f"  {shots:>3} per class ({len(group)} seeds, n={group[0]['rule']['accuracy']['n']} test images each): "
              f"rule {rule:.2%}, point estimate {point:.2%}, difference {100 * (point - rule):+.2f} pt")


if __name__ == "__main__":
    main()
