"""What cross-validation's distillation settings cost, each running the teacher against sharing
its logits.

    python -m edgetl.benchmarks.shared_teacher_logits [--teachers efficientnet_lite2,resnet50]
        [--student efficientnet_lite0] [--images 128] [--epochs 4] [--rounds 2]

Under cross-validation every distillation setting (`--search`: two by default) trains on each
fold (compiler/training/cv_training.py), and the settings of a fold draw the same batches
through the same frozen teacher, so the first setting's teacher logits serve the others
(compiler/training/distill.TeacherLogits). For each teacher (random weights, 12 classes), this
times one fold's two settings (temperature 2 with the teacher's share 0.5, then function
matching: the compile's grid) both ways, in alternating rounds, over --images random images at
the view size, and prints the median seconds of each, their ratio, and the share of teacher
steps that were read back. Random pixels and weights cost what real ones do.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

SETTINGS = ((2.0, 0.5), (1.0, 1.0))  # CompileConfig.distill_recipes under --search, at the defaults


def time_fold(student, teacher, start, x, y, epochs: int, batch: int, memo) -> float:
    """Seconds for one fold's distillation settings, trained one after the other as the compile does."""
    from edgetl.compiler.training.distill import (
        Distiller,
        distillation_dataset,
        logits_model,
    )

    from edgetl._compat import keras

    began = time.perf_counter()
    for temperature, alpha in SETTINGS:
        student.set_weights(start)
        if memo is not None:
            memo.start()
        keras.utils.set_random_seed(0)
        distiller = Distiller(logits_model(student), logits_model(teacher), temperature, alpha, teacher_logits=memo)
        distiller.compile(optimizer=keras.optimizers.Adam(1e-4))
        distiller.fit(distillation_dataset(x, y, batch, 0), epochs=epochs, verbose=0)
    return time.perf_counter() - began


def measure(teacher_name: str, student_name: str, n_images: int, epochs: int, rounds: int, batch: int, log) -> dict:
    from edgetl.compiler.training.distill import TeacherLogits
    from edgetl.compiler.training.finetune import set_trainable_top
    from edgetl.models import create_model, get_config

    student_config = get_config(student_name)
    teacher = create_model(teacher_name, weights=None, num_classes=12)
    student = create_model(student_name, weights=None, num_classes=12)
    set_trainable_top(student, student_config.unfreeze_from)
    view = max(get_config(teacher_name).input_size, student_config.input_size)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n_images, view, view, 3)).astype(np.uint8)
    y = rng.integers(0, 12, n_images).astype(np.int32)
    start = student.get_weights()
    time_fold(student, teacher, start, x[:batch], y[:batch], 1, batch, None)  # warm-up
    seconds = {"each": [], "shared": []}
    reused = []
    for r in range(rounds):
        for way in (("each", "shared") if r % 2 == 0 else ("shared", "each")):
            memo = TeacherLogits(12) if way == "shared" else None
            seconds[way].append(time_fold(student, teacher, start, x, y, epochs, batch, memo))
            if memo is not None:
                reused.append(memo.reused / (memo.reused + memo.computed))
            log(f"{teacher_name} -> {student_name}, round {r + 1}: {way} {seconds[way][-1]:.1f} s")
    each, shared = statistics.median(seconds["each"]), statistics.median(seconds["shared"])
    return {"teacher": teacher_name, "student": student_name, "each_s": each, "shared_s": shared,
            "ratio": shared / each, "reused": min(reused)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgetl.benchmarks.shared_teacher_logits", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teachers", default="efficientnet_lite2,resnet50")
    parser.add_argument("--student", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=128, help="training images of a fold")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32, help="the compile's --batch-size default")
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    rows = [measure(t, args.student, args.images, args.epochs, args.rounds, args.batch, log) for t in args.teachers.split(",")]
    print(f"one fold's {len(SETTINGS)} distillation settings: {args.images} images x {args.epochs} epochs each, median of {args.rounds} rounds")
    print(f"{'teacher':20} {'student':20} {'teacher each time':>18} {'logits shared':>14} {'shared/each':>12} {'teacher steps read back':>24}")
    for r in rows:
        print(f"{r['teacher']:20} {r['student']:20} {r['each_s']:16.1f} s {r['shared_s']:12.1f} s {r['ratio']:11.2f}x {r['reused']:23.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
