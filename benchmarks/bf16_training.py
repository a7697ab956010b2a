"""Does bf16 mixed precision speed up training, per model family? fp32 vs bf16, same sitting.

    python -m edgetl.benchmarks.bf16_training [--models resnet50,efficientnet_lite0] [--rounds 2]

For each model: the registry model (random weights, 12 classes) is built twice, in float32 and
under tf_keras' `mixed_bfloat16` policy (compiler/spec/precision.py), with the top of the backbone
unfrozen as the teacher's fine-tuning does (`set_trainable_top` from the family's
`unfreeze_from`), compiled with Adam; then, in alternating rounds (fp32, bf16, bf16, fp32, ...),
--steps training steps (`train_on_batch`, batch --batch of random images) and as many frozen
forward passes (`predict_on_batch`: what feature extraction and distillation's teacher do) are
timed. Printed: images per second of each, the bf16/fp32 speed-up (median over rounds), and
the registry's `bf16_training` flag beside it, so a flag that the figures contradict shows.

With --student NAME (default efficientnet_lite0; "none" skips it), each model is also timed as
a distillation teacher: the compile's Distiller, the student's top unfrozen, one epoch of
--steps batches of the distillation dataset (augmentation included), the teacher in float32
against its bf16 copy (`bf16_copy`). The compile distils from the float32 teacher: at its batch
of 32 this timing showed no gain for ResNet50 (compiler/spec/precision.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np


def _build(name: str, bf16: bool, batch: int):
    from edgetl._compat import keras
    from edgetl.compiler.training.finetune import set_trainable_top
    from edgetl.compiler.spec.precision import training_policy
    from edgetl.models import create_model, get_config

    with training_policy(bf16):
        model = create_model(name, weights=None, num_classes=12)
    set_trainable_top(model, get_config(name).unfreeze_from)
    model.compile(keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy())
    size = model.input_shape[1]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, 12, batch)
    model.train_on_batch(x, y)  # trace and allocate outside the timing
    model.predict_on_batch(x)
    return model, x, y


def _time(fn, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def measure(name: str, rounds: int, steps: int, batch: int, log) -> dict:
    from edgetl.compiler.spec.precision import is_mixed

    built = {False: _build(name, False, batch), True: _build(name, True, batch)}
    assert is_mixed(built[True][0]) and not is_mixed(built[False][0])
    train = {False: [], True: []}
    infer = {False: [], True: []}
    for r in range(rounds):
        for bf16 in ((False, True) if r % 2 == 0 else (True, False)):
            model, x, y = built[bf16]
            train[bf16].append(batch / _time(lambda: model.train_on_batch(x, y), steps))
            infer[bf16].append(batch / _time(lambda: model.predict_on_batch(x), steps))
            log(f"  {name} round {r + 1} {'bf16' if bf16 else 'fp32'}: train {train[bf16][-1]:.1f} img/s, "
                f"forward {infer[bf16][-1]:.1f} img/s")
    return {
        "model": name,
        "train_img_s": {"fp32": statistics.median(train[False]), "bf16": statistics.median(train[True])},
        "forward_img_s": {"fp32": statistics.median(infer[False]), "bf16": statistics.median(infer[True])},
        "train_speedup": statistics.median(b / f for f, b in zip(train[False], train[True])),
        "forward_speedup": statistics.median(b / f for f, b in zip(infer[False], infer[True])),
    }


def measure_distillation(name: str, student: str, rounds: int, steps: int, batch: int, log) -> dict:
    """Images per second of a distillation epoch with `name` as the teacher, float32 vs bf16."""
    from edgetl._compat import keras
    from edgetl.compiler.spec.precision import bf16_copy
    from edgetl.compiler.training.distill import Distiller, distillation_dataset, logits_model
    from edgetl.compiler.training.finetune import set_trainable_top
    from edgetl.models import create_model, get_config

    teacher = create_model(name, weights=None, num_classes=12)
    teachers = {False: teacher, True: bf16_copy(teacher, name, 12, teacher.input_shape[1], 0.2)}
    size = max(teacher.input_shape[1], get_config(student).input_size)
    rng = np.random.default_rng(0)
    data = distillation_dataset(rng.integers(0, 256, (steps * batch, size, size, 3), dtype=np.uint8),
                                rng.integers(0, 12, steps * batch), batch, 0)
    distillers = {}
    for bf16, t in teachers.items():
        s = create_model(student, weights=None, num_classes=12)
        set_trainable_top(s, get_config(student).unfreeze_from)
        distillers[bf16] = Distiller(logits_model(s), logits_model(t), 2.0, 0.5)
        distillers[bf16].compile(optimizer=keras.optimizers.Adam(1e-4))
        distillers[bf16].fit(data, epochs=1, verbose=0)  # trace and allocate outside the timing
    speed = {False: [], True: []}
    for r in range(rounds):
        for bf16 in ((False, True) if r % 2 == 0 else (True, False)):
            t0 = time.perf_counter()
            distillers[bf16].fit(data, epochs=1, verbose=0)
            speed[bf16].append(steps * batch / (time.perf_counter() - t0))
            log(f"  {name} -> {student} round {r + 1} teacher {'bf16' if bf16 else 'fp32'}: distillation {speed[bf16][-1]:.1f} img/s")
    return {"fp32": statistics.median(speed[False]), "bf16": statistics.median(speed[True]),
            "speedup": statistics.median(b / f for f, b in zip(speed[False], speed[True]))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgetl.benchmarks.bf16_training", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet50,efficientnet_lite0")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round and precision")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--student", default="efficientnet_lite0", help='the student of the distillation timing; "none": skip it')
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    from edgetl.compiler.spec.precision import cpu_has_bf16
    from edgetl.models import get_config

    rows = [measure(name, args.rounds, args.steps, args.batch, log) for name in args.models.split(",")]
    if args.student != "none":
        for r in rows:
            r["distillation_img_s"] = measure_distillation(r["model"], args.student, args.rounds, args.steps, args.batch, log)
    print(f"bf16 mixed precision vs float32 · batch {args.batch} · {args.rounds} rounds x {args.steps} steps · "
          f"native bf16 on this CPU: {cpu_has_bf16()}")
    print(f"{'model':20} {'train fp32':>11} {'train bf16':>11} {'speed-up':>9} {'fwd fp32':>9} {'fwd bf16':>9} {'speed-up':>9}  registry flag")
    for r in rows:
        t, f = r["train_img_s"], r["forward_img_s"]
        print(f"{r['model']:20} {t['fp32']:9.1f}/s {t['bf16']:9.1f}/s {r['train_speedup']:8.2f}x {f['fp32']:7.1f}/s "
              f"{f['bf16']:7.1f}/s {r['forward_speedup']:8.2f}x  bf16_training={get_config(r['model']).bf16_training}")
    if args.student != "none":
        print(f"\nas the teacher of a distillation into {args.student} (its top trained, the teacher frozen):")
        print(f"{'teacher':20} {'fp32':>11} {'bf16':>11} {'speed-up':>9}")
        for r in rows:
            d = r["distillation_img_s"]
            print(f"{r['model']:20} {d['fp32']:9.1f}/s {d['bf16']:9.1f}/s {d['speedup']:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
