"""Few-shot benchmark: the deployed int8 file against a plain linear probe, at several data sizes.

    python -m edgetl.benchmarks.fewshot --data ../shared/datasets/flowers12 --work /tmp/fewshot
        [--shots 5,10,20,all] [--seeds 0,1,2] [--teacher efficientnet_lite2] [--student efficientnet_lite0]
        [-- EXTRA COMPILE OPTIONS]

DATA must hold train/<class>/ and test/<class>/. For each setting (N training images per class,
drawn with the seed; "all" = the whole of train/, one seed), the benchmark:

1. fits its own probe: frozen ImageNet features of the student's registry model (global
   average pool) + scikit-learn's StandardScaler and LogisticRegression, C chosen by 5-fold
   stratified cross-validation on those N images alone. It shares no code with edgetl's own
   probe candidate (compiler/training/probe.py): an independent yardstick;
2. runs `edgetl compile` as a user would (a fresh process) on train/ (the N images) plus the
   full test/, with `--quantize int8 --no-baseline` and the options after `--`;
3. scores the deployed `model.tflite` on the full test/ in LiteRT, itself;
4. prints, per setting and seed, both accuracies with their Wilson intervals, their paired
   difference with its 95% interval (Newcombe), the compile's wall time, and per setting the
   mean over seeds. Everything is also written to WORK/fewshot.json.

The compile's stage cache lives in WORK/cache, so a rerun of the same setting is fast; pass
`-- --no-cache` to time training from scratch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from edgetl.compiler.evaluation.stats import (
    Accuracy,
    accuracy_span,
    paired_difference,
    points_span,
)

C_GRID = [1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0]


def probe_features(data: Path, model_name: str, work: Path):
    """Pooled features of every train/ and test/ image, from the frozen pretrained model (cached):
    the final feature map's, as plain feature extraction pools them (not the extra pooled block
    that edgetl's own probe may also read: see block_features)."""
    dataset, cached = _features_cache(data, model_name, work)
    return dataset, cached["f_train"], cached["y_train"], cached["f_test"], cached["y_test"]


def block_features(data: Path, model_name: str, work: Path) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) pooled features of the model's ModelConfig.pooled_block (cached with
    probe_features'); empty columns for a model that pools no block."""
    _, cached = _features_cache(data, model_name, work)
    return cached["b_train"], cached["b_test"]


def _features_cache(data: Path, model_name: str, work: Path) -> tuple[object, dict]:
    from edgetl.compiler.data.datasets import load_images, scan_dataset

    from edgetl.errors import DataError

    try:
        dataset = scan_dataset(data, selection="holdout", val_fraction=0.0, test_fraction=0.0)
    except DataError as error:  # a wrong --data: one line, not a traceback
        sys.exit(f"error: {error}")
    cache = work / f"features-{model_name}.npz"
    train, test = dataset.splits["train"], dataset.splits["test"]
    if not test:
        sys.exit(f"error: {data} has no test/ folder; the benchmark scores on a fixed test split")
    if cache.is_file():
        with np.load(cache) as d:
            if "b_train" in d.files:  # a cache from before the pooled block is extracted again
                return dataset, dict(d)
    from edgetl.models import (
        FEATURES_LAYER,
        create_model,
        final_pool_output,
        final_pool_width,
    )

    from edgetl._compat import keras, tf

    model = create_model(model_name, weights="imagenet", num_classes=len(dataset.classes))
    final, width = final_pool_output(model), final_pool_width(model)
    features = keras.Model(model.input, model.get_layer(FEATURES_LAYER).output if width else final)
    size = model.input_shape[1]

    def extract(samples):
        x, y = load_images(samples, size)
        f = np.concatenate([features(tf.constant(x[i : i + 32], tf.float32), training=False).numpy() for i in range(0, len(x), 32)])
        width_final = width or f.shape[1]
        return f[:, :width_final], f[:, width_final:], y

    f_train, b_train, y_train = extract(train)
    f_test, b_test, y_test = extract(test)
    cached = {"f_train": f_train, "b_train": b_train, "y_train": y_train, "f_test": f_test, "b_test": b_test, "y_test": y_test}
    np.savez(cache, **cached)
    return dataset, cached


def sklearn_probe(f_train, y_train, f_test, seed: int):
    """Standardised features, multinomial logistic regression, C by 5-fold stratified CV."""
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    folds = min(5, int(np.bincount(y_train).min()))
    search = GridSearchCV(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)),
        {"logisticregression__C": C_GRID},
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
    )
    # One BLAS thread: small matrices, and threads contending with other processes slow it 20x.
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        search.fit(f_train, y_train)
    return search.predict(f_test), search.best_params_["logisticregression__C"]


def subset(y: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Indices of `per_class` images of each class (all when None), drawn with `seed`."""
    if per_class is None:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in np.unique(y)]
    return np.sort(np.concatenate(picks))


def make_folder(dataset, chosen: np.ndarray, folder: Path) -> Path:
    """train/ with the chosen images and the full test/, as symbolic links."""
    if folder.exists():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    for split, samples in (("train", [dataset.splits["train"][i] for i in chosen]), ("test", dataset.splits["test"])):
        for s in samples:
            link = tmp / split / dataset.classes[s.label] / s.path.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(s.path)
    tmp.rename(folder)
    return folder


def deployed_correct(out: Path, dataset) -> np.ndarray:
    from edgetl.compiler.data.datasets import load_images
    from edgetl.runtime import open_session

    session = open_session(out / "model.tflite")
    x, y = load_images(dataset.splits["test"], session.input_size)
    return session.predict(x, 32).argmax(1) == y


def compile_command(folder: Path, out: Path, teacher: str, student: str, seed: int, cache: Path, extra: list[str],
                    entry: list[str] | None = None) -> list[str]:
    """The few-shot compile as a user runs it (entry: the program, `python -m edgetl.cli` by default)."""
    entry = entry or [sys.executable, "-m", "edgetl.cli"]
    return [*entry, "compile", str(folder), "--out", str(out), "--overwrite", "--teacher", teacher, "--student", student,
            "--quantize", "int8", "--no-baseline", "--seed", str(seed), "--cache-dir", str(cache), *extra]


def run_logged(command: list[str], log: Path) -> tuple[int, float]:
    """Run a command with its output in `log` (wide, for rich's tables); its exit code and wall time."""
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call(command, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "120"})
    return code, time.perf_counter() - start


def benchmark_arguments(argv: list[str] | None, description: str) -> tuple[argparse.ArgumentParser, list[str], list[str]]:
    """The parser of a compile-running benchmark (--data, --work), the benchmark's own arguments
    and the compile options after `--`."""
    argv = sys.argv[1:] if argv is None else argv
    own, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    return parser, own, extra


def add_setting_arguments(parser: argparse.ArgumentParser, shots: str) -> None:
    """The few-shot settings a compile-running benchmark sweeps, and the models it compiles."""
    parser.add_argument("--shots", default=shots)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--teacher", default="efficientnet_lite2")
    parser.add_argument("--student", default="efficientnet_lite0")


def main(argv: list[str] | None = None) -> None:
    parser, argv, extra = benchmark_arguments(argv, __doc__)
    add_setting_arguments(parser, shots="5,10,20,all")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.data.resolve()

    dataset, f_train, y_train, f_test, y_test = probe_features(data, args.student, args.work)
    rows = []
    results_file = args.work / "fewshot.json"
    done = {(r["shots"], r["seed"]): r for r in json.loads(results_file.read_text())} if results_file.is_file() else {}
    for shots in args.shots.split(","):
        per_class = None if shots == "all" else int(shots)
        for seed in [int(s) for s in args.seeds.split(",")] if per_class else [0]:
            if (shots, seed) in done:
                rows.append(done[(shots, seed)])
                continue
            chosen = subset(y_train, per_class, seed)
            predicted, C = sklearn_probe(f_train[chosen], y_train[chosen], f_test, seed)
            probe_ok = predicted == y_test
            folder = data if per_class is None else make_folder(dataset, chosen, args.work / "data" / f"shots{shots}-seed{seed}")
            out = args.work / "out" / f"shots{shots}-seed{seed}"
            command = compile_command(folder, out, args.teacher, args.student, seed, args.work / "cache", extra)
            print(f"[{shots} per class, seed {seed}] {' '.join(command)}", flush=True)
            log = args.work / f"compile-shots{shots}-seed{seed}.log"
            code, wall = run_logged(command, log)
            if code != 0:
                print(f"  compile failed (exit {code}); see {log}", flush=True)
                continue
            deployed_ok = deployed_correct(out, dataset)
            report = json.loads((out / "report.json").read_text())
            diff = paired_difference(deployed_ok.tolist(), probe_ok.tolist())
            row = {
                "shots": shots, "seed": seed, "train_images": len(chosen),
                "probe": Accuracy(int(probe_ok.sum()), len(y_test)).to_json() | {"C": C},
                "deployed": Accuracy(int(deployed_ok.sum()), len(y_test)).to_json() | {"variant": report["deployed"]["tflite_variant"]},
                "difference": diff.to_json(),
                "selection": report["dataset"].get("selection"),
                "wall_s": round(wall, 1),
            }
            rows.append(row)
            done[(shots, seed)] = row
            results_file.write_text(json.dumps(list(done.values()), indent=1))
            print(f"  probe {Accuracy(int(probe_ok.sum()), len(y_test)).describe()}  deployed int8 "
                  f"{Accuracy(int(deployed_ok.sum()), len(y_test)).describe()}  {diff.verdict('deployed', 'probe')}  "
                  f"compile {wall:.0f} s", flush=True)
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    n = rows[0]["probe"]["n"] if rows else 0
    print(f"\nevery row on the same {n} test images (n={n})")
    print("shots  seed  train  probe (95% CI)           deployed int8 (95% CI)    deployed - probe (95% CI)      compile")
    for r in rows:
        p, d, diff = r["probe"], r["deployed"], r["difference"]
        print(f"{r['shots']:>5}  {r['seed']:>4}  {r['train_images']:>5}  "
              f"{accuracy_span(p['accuracy'], p['ci95']):<23}  {accuracy_span(d['accuracy'], d['ci95']):<24}  "
              f"{points_span(diff['difference'], diff['ci95']):<29}  {r['wall_s']:6.0f} s")
    print("\nmean over seeds:")
    for shots in dict.fromkeys(r["shots"] for r in rows):
        group = [r for r in rows if r["shots"] == shots]
        probe = np.mean([r["probe"]["accuracy"] for r in group])
        deployed = np.mean([r["deployed"]["accuracy"] for r in group])
        # The seeds share one test set, so no interval pools them; their spread is what a mean can show.
        spread = [100 * (r["deployed"]["accuracy"] - r["probe"]["accuracy"]) for r in group]
        print(f"  {shots:>5} per class ({len(group)} seed{'s' if len(group) > 1 else ''}, n={group[0]['probe']['n']} test images each): "
              f"probe {probe:.2%}, deployed int8 {deployed:.2%}, difference {100 * (deployed - probe):+.2f} pt "
              f"(seeds {min(spread):+.1f} to {max(spread):+.1f}), "
              f"mean compile {np.mean([r['wall_s'] for r in group]):.0f} s")


if __name__ == "__main__":
    main()
