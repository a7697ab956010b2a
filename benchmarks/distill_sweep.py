"""Distillation temperature / mixing-weight sweep: how the defaults were chosen.

    python benchmarks/distill_sweep.py DATA TEACHER.keras [--temperatures 2,4,8] [--alphas 0.5,0.7,0.9]

TEACHER.keras is the fine-tuned teacher of an `edgetl compile` of DATA (its registry name is the
model's name); the splits are edgetl's defaults, so val and test are the compile's. The student is head-initialised once, then each (T, alpha) pair trains
from that same start with the same budget; alpha 0 is the no-teacher baseline. Prints val and
test accuracy per pair, each with its 95% Wilson interval and n, and each pair's test change from
the baseline with its paired (Newcombe) interval (the default is chosen on val, never on test).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from edgetl.compiler.data.datasets import scan_dataset
from edgetl.compiler.evaluation.stats import accuracy_span, describe_accuracy, paired_difference, points_span, wilson_interval
from edgetl.compiler.spec.config import CompileConfig
from edgetl.compiler.data.image_store import ImageCache
from edgetl.compiler.stages.student import new_student, student_views
from edgetl.compiler.stages.trained import TrainedModel
from edgetl.models import get_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("teacher", type=Path)
    parser.add_argument("--temperatures", default="2,4,8")
    parser.add_argument("--alphas", default="0.5,0.7,0.9")
    parser.add_argument("--student", default="efficientnet_lite0")
    parser.add_argument("--student-size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()

    from edgetl.compiler.training.distill import train_student
    from edgetl.compiler.training.finetune import train_head
    from edgetl.runtime.keras_model import KerasSession, load_keras_model

    teacher_model = load_keras_model(args.teacher)
    config = CompileConfig(
        data=args.data,
        out=Path("unused"),
        teacher=teacher_model.name,
        student=args.student,
        student_size=args.student_size,
        distill_epochs=args.epochs,
    )
    dataset = scan_dataset(config.data, val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed)
    images = ImageCache(dataset)
    teacher_cfg = get_config(config.teacher)
    teacher = TrainedModel("teacher", config.teacher, teacher_cfg, teacher_model, teacher_cfg.input_size, {})
    student_cfg = get_config(config.student)
    size = config.student_size or student_cfg.input_size

    from edgetl._compat import tf

    student = new_student(config, size, len(dataset.classes), tf.distribute.get_strategy())
    val = images.get("val", size)
    x_test, y_test = images.get("test", size)
    train_head(student, config, images.get("train", size), val, label="student")
    head_weights = student.get_weights()
    t_test = KerasSession(model=teacher_model).predict(images.get("test", teacher.input_size)[0])
    print(f"teacher {config.teacher}: test accuracy {describe_accuracy(float((t_test.argmax(1) == y_test).mean()), len(y_test))}")
    n_val, n_test = len(val[1]), len(y_test)

    pairs = [(0.0, 1.0)] + [
        (float(a), float(t)) for t in args.temperatures.split(",") for a in args.alphas.split(",")
    ]
    rows = []
    for alpha, temperature in pairs:
        student.set_weights(head_weights)
        start = time.perf_counter()
        result = train_student(
            student,
            teacher_model if alpha > 0 else None,
            unfreeze_from=student_cfg.unfreeze_from,
            train_views=student_views(config, teacher if alpha > 0 else None, size, images),
            val=val,
            epochs=config.distill_epochs,
            learning_rate=config.distill_learning_rate,
            batch_size=config.batch_size,
            patience=config.patience,
            temperature=temperature,
            alpha=alpha,
            seed=config.seed,
            label=f"alpha {alpha} T {temperature}",
        )
        correct = KerasSession(model=student).predict(x_test).argmax(1) == y_test
        if not rows:  # the first pair is alpha 0: the no-teacher baseline the others are paired with
            baseline = correct
        rows.append((alpha, temperature, result.stage.best_val_accuracy, correct, result.stage.epochs_run, time.perf_counter() - start))
        print(f"alpha {alpha:.2f}  T {temperature:4.1f}  val {describe_accuracy(rows[-1][2], n_val)}  "
              f"test {describe_accuracy(float(correct.mean()), n_test)}  epochs {rows[-1][4]}  {rows[-1][5]:.0f}s", flush=True)

    def interval(accuracy: float, n: int) -> str:
        return accuracy_span(accuracy, wilson_interval(round(accuracy * n), n))

    # Each pair against the no-teacher baseline (the first row) on the same test images.
    print(f"\nval n={n_val}, test n={n_test}; 95% intervals (Wilson; the change from alpha 0 is paired, Newcombe)")
    print(f"alpha  T     {'val acc':<22}  {'test acc':<22}  {'test - alpha 0 (points)':<26}  epochs  seconds")
    for alpha, t, val_acc, correct, epochs, secs in rows:
        d = paired_difference(correct, baseline)
        change = "(baseline)" if alpha == 0 else points_span(d.difference, (d.low, d.high))
        print(f"{alpha:5.2f}  {t:4.1f}  {interval(val_acc, n_val):<22}  {interval(float(correct.mean()), n_test):<22}  "
              f"{change:<26}  {epochs:6d}  {secs:7.0f}")


if __name__ == "__main__":
    main()
