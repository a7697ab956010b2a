"""Source task to target task: does a model edgetl fine-tuned on one task help on the next?

    python -m edgetl.benchmarks.chaining --data ../shared/datasets/flowers12 --work /tmp/chaining
        [--model efficientnet_lite0] [--shots 5,10,all] [--seeds 0,1,2] [--compile-shots 10] [--compile-seeds 0]

DATA must hold train/<class>/ and test/<class>/. The classes (sorted) are cut in two disjoint
halves: task A (the first half) and task B (the second). The benchmark:

1. compiles task A as a user would (`edgetl compile A --teacher MODEL --student none
   --quantize int8 --no-baseline`, all of A's train/): A's teacher.keras is the source model;
2. feature level, cheap and so over many draws: for each shot count and seed, a scikit-learn
   probe (standardised features, logistic regression, C by 5-fold CV) on task B's pooled
   features from (a) the ImageNet backbone and (b) task A's fine-tuned backbone, both scored
   on B's full test/, with their paired difference;
3. end to end: task B compiled twice per --compile-shots and --compile-seeds, once from
   ImageNet weights and once with `--teacher-weights A/teacher.keras` (a new head for B's
   classes), each deployed int8 file scored on B's full test/.

When A's compile keeps its linear probe (its selection found fine-tuning no better beyond
noise), A's teacher.keras carries ImageNet's backbone and chaining changes nothing: the
benchmark says so. `--source-epochs N` then asks the other question, whether a backbone
fine-tuned on A would help B: the benchmark fine-tunes A's model itself (the top of the
backbone, edgetl's augmentation and learning rate, N epochs on all of A's images) and uses
that as the source. Everything is written to WORK/chaining.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgetl.benchmarks.fewshot import benchmark_arguments, deployed_correct, sklearn_probe, subset
from edgetl.compiler.evaluation.stats import Accuracy, paired_difference


def class_folder(dataset, classes: list[str], per_class: int | None, seed: int, folder: Path) -> Path:
    """train/ (per_class images of each class, all when None, drawn with seed) and test/ of
    `classes` only, as symbolic links."""
    if folder.exists():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    wanted = {dataset.classes.index(c) for c in classes}
    train = [s for s in dataset.splits["train"] if s.label in wanted]
    chosen = subset(np.array([s.label for s in train]), per_class, seed)
    for split, samples in (("train", [train[i] for i in chosen]), ("test", [s for s in dataset.splits["test"] if s.label in wanted])):
        for s in samples:
            link = tmp / split / dataset.classes[s.label] / s.path.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(s.path)
    tmp.rename(folder)
    return folder


def compile_folder(folder: Path, out: Path, model: str, seed: int, cache: Path, log: Path, extra: list[str]) -> float:
    command = [sys.executable, "-m", "edgetl.cli", "compile", str(folder), "--out", str(out), "--overwrite",
               "--teacher", model, "--student", "none", "--quantize", "int8", "--no-baseline", "--seed", str(seed),
               "--cache-dir", str(cache), *extra]
    print(f"  {' '.join(command)}", flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.call(command, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "120"})
    if code != 0:
        sys.exit(f"error: compile failed (exit {code}); see {log}")
    return time.perf_counter() - start


def pooled_features(model_name: str, weights, num_classes: int, dataset_b) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pooled features of task B's train/ and test/ images from a backbone (`weights`: "imagenet"
    or an edgetl .keras file, whose layers are transferred and head replaced)."""
    from edgetl._compat import keras, tf
    from edgetl.compiler.data.datasets import load_images
    from edgetl.models import create_model, final_pool_output

    model = create_model(model_name, weights=weights, num_classes=num_classes)
    # The final map's pooled channels, as plain feature extraction reads them: what the backbone
    # itself learnt on task A, without the extra pooled block the compile's probe may read.
    features = keras.Model(model.input, final_pool_output(model))
    size = model.input_shape[1]

    def extract(samples):
        x, y = load_images(samples, size)
        return np.concatenate([features(tf.constant(x[i : i + 32], tf.float32), training=False).numpy() for i in range(0, len(x), 32)]), y

    (f_train, y_train), (f_test, y_test) = extract(dataset_b.splits["train"]), extract(dataset_b.splits["test"])
    return f_train, y_train, f_test, y_test


def fine_tuned_source(model_name: str, start: Path, dataset_a, epochs: int, seed: int, path: Path) -> Path:
    """Task A's model with the top of its backbone fine-tuned for `epochs` on all of A's images."""
    if path.is_file():
        return path
    from edgetl._compat import keras
    from edgetl.compiler.spec.config import CompileConfig
    from edgetl.compiler.data.datasets import load_images
    from edgetl.compiler.training.finetune import set_trainable_top, training_dataset
    from edgetl.models import create_model, get_config

    defaults = CompileConfig(data=Path("."), out=Path("."))  # only its defaults are read
    keras.utils.set_random_seed(seed)
    model = create_model(model_name, weights=str(start), num_classes=len(dataset_a.classes))
    set_trainable_top(model, get_config(model_name).unfreeze_from)
    model.compile(keras.optimizers.Adam(defaults.finetune_learning_rate), keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    x, y = load_images(dataset_a.splits["train"], model.input_shape[1])
    model.fit(training_dataset(x, y, defaults.batch_size, seed), epochs=epochs, verbose=2)
    tmp = path.with_name(path.stem + ".tmp.keras")
    model.save(tmp)
    tmp.rename(path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser, argv, extra = benchmark_arguments(argv, __doc__)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--shots", default="5,10,all")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--compile-shots", default="10", help="per-class sizes of task B compiled end to end ('' for none)")
    parser.add_argument("--compile-seeds", default="0")
    parser.add_argument("--source-epochs", type=int, default=0,
                        help="fine-tune task A's model this many epochs in the benchmark itself and chain from that")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    from edgetl.compiler.data.datasets import scan_dataset

    dataset = scan_dataset(args.data.resolve(), selection="holdout", val_fraction=0.0, test_fraction=0.0)
    if not dataset.splits["test"]:
        sys.exit(f"error: {args.data} has no test/ folder; the benchmark scores on a fixed test split")
    half = len(dataset.classes) // 2
    task_a, task_b = dataset.classes[:half], dataset.classes[half:]
    print(f"task A: {', '.join(task_a)}\ntask B: {', '.join(task_b)}", flush=True)
    results: dict = {"task_a": task_a, "task_b": task_b, "model": args.model}

    # 1. The source model: task A, all of its training images.
    folder_a = class_folder(dataset, task_a, None, 0, args.work / "data" / "A")
    out_a = args.work / "out" / "A"
    if not (out_a / "report.json").is_file():
        print("task A: compile", flush=True)
        results["task_a_wall_s"] = round(compile_folder(folder_a, out_a, args.model, 0, args.work / "cache", args.work / "compile-A.log", extra), 1)
    report_a = json.loads((out_a / "report.json").read_text())
    selection_a = report_a["models"]["teacher"]["training"].get("selection") or {}
    results["task_a_selection"] = {k: selection_a.get(k) for k in ("method", "chosen_epochs", "probe_kept")}
    print(f"task A chose: {'the linear probe (backbone = ImageNet)' if selection_a.get('probe_kept') else str(selection_a.get('chosen_epochs')) + ' epochs of fine-tuning'}", flush=True)
    source = out_a / "teacher.keras"
    if args.source_epochs:
        dataset_a = scan_dataset(folder_a, selection="holdout", val_fraction=0.0, test_fraction=0.0)
        print(f"source: task A's model fine-tuned {args.source_epochs} epochs by the benchmark", flush=True)
        source = fine_tuned_source(args.model, source, dataset_a, args.source_epochs, 0, args.work / f"source-ft{args.source_epochs}.keras")
        results["source"] = {"fine_tuned_epochs_by_benchmark": args.source_epochs}

    # 2. Feature level: the same probe on ImageNet features vs task A's backbone.
    dataset_b = scan_dataset(class_folder(dataset, task_b, None, 0, args.work / "data" / "B"), selection="holdout",
                             val_fraction=0.0, test_fraction=0.0)
    imagenet = pooled_features(args.model, "imagenet", len(task_b), dataset_b)
    chained = pooled_features(args.model, str(source), len(task_b), dataset_b)
    results["feature_level"] = []
    print("\nfeature level (task B, sklearn probe, scored on B's test/):")
    for shots in args.shots.split(","):
        per_class = None if shots == "all" else int(shots)
        for seed in [int(s) for s in args.seeds.split(",")] if per_class else [0]:
            chosen = subset(imagenet[1], per_class, seed)
            ok = {}
            for name, (f_train, y_train, f_test, y_test) in (("imagenet", imagenet), ("chained", chained)):
                predicted, _ = sklearn_probe(f_train[chosen], y_train[chosen], f_test, seed)
                ok[name] = predicted == y_test
            diff = paired_difference(ok["chained"].tolist(), ok["imagenet"].tolist())
            row = {"shots": shots, "seed": seed, "imagenet": Accuracy(int(ok["imagenet"].sum()), len(y_test)).to_json(),
                   "chained": Accuracy(int(ok["chained"].sum()), len(y_test)).to_json(), "difference": diff.to_json()}
            results["feature_level"].append(row)
            print(f"  {shots:>4}/class seed {seed}: ImageNet {Accuracy(int(ok['imagenet'].sum()), len(y_test)).describe()}  "
                  f"from task A {Accuracy(int(ok['chained'].sum()), len(y_test)).describe()}  {diff.verdict('from task A', 'ImageNet')}", flush=True)
    for shots in dict.fromkeys(r["shots"] for r in results["feature_level"]):
        group = [r for r in results["feature_level"] if r["shots"] == shots]
        mean = {k: np.mean([r[k]["accuracy"] for r in group]) for k in ("imagenet", "chained")}
        print(f"  mean {shots:>4}/class over {len(group)} seed(s): ImageNet {mean['imagenet']:.2%}, from task A {mean['chained']:.2%}, "
              f"difference {100 * (mean['chained'] - mean['imagenet']):+.2f} pt")

    # 3. End to end: task B compiled from ImageNet and from task A's model.
    results["end_to_end"] = []
    if args.compile_shots:
        print("\nend to end (task B, deployed int8 model.tflite on B's test/):")
    for shots in [s for s in args.compile_shots.split(",") if s]:
        per_class = None if shots == "all" else int(shots)
        for seed in [int(s) for s in args.compile_seeds.split(",")]:
            folder = class_folder(dataset, task_b, per_class, seed, args.work / "data" / f"B-shots{shots}-seed{seed}")
            ok, wall = {}, {}
            for name, weights in (("imagenet", []), ("chained", ["--teacher-weights", str(source)])):
                out = args.work / "out" / f"B-shots{shots}-seed{seed}-{name}"
                wall[name] = compile_folder(folder, out, args.model, seed, args.work / "cache", args.work / f"compile-B-{shots}-{seed}-{name}.log", extra + weights)
                ok[name] = deployed_correct(out, scan_dataset(folder, selection="holdout", val_fraction=0.0, test_fraction=0.0))
            diff = paired_difference(ok["chained"].tolist(), ok["imagenet"].tolist())
            n = len(ok["imagenet"])
            results["end_to_end"].append({"shots": shots, "seed": seed, "imagenet": Accuracy(int(ok["imagenet"].sum()), n).to_json(),
                                          "chained": Accuracy(int(ok["chained"].sum()), n).to_json(), "difference": diff.to_json(),
                                          "wall_s": {k: round(v, 1) for k, v in wall.items()}})
            print(f"  {shots:>4}/class seed {seed}: ImageNet {Accuracy(int(ok['imagenet'].sum()), n).describe()}  "
                  f"--teacher-weights A {Accuracy(int(ok['chained'].sum()), n).describe()}  {diff.verdict('from task A', 'ImageNet')}", flush=True)
    (args.work / "chaining.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
