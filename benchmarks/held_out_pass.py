"""What cross-validation's per-epoch held-out scoring costs, whole model against the frozen cut.

    python -m edgetl.benchmarks.held_out_pass [--models efficientnet_lite2,efficientnet_lite0,resnet50]
        [--images 224] [--epochs 8] [--rounds 3]

Under cross-validation every fold scores its held-out images after every epoch of training
(compiler/training/cv_training.py). Everything below the first trainable layer is frozen for
the fold, so `HeldOutScorer` runs that bottom once per fold and each epoch only the layers
from the first trainable one up, in a copy of the model cut there (made once per recipe). For
each model (random weights, 12 classes, its own input size) and each fine-tuning depth of its recipes (ModelConfig.unfreeze_from and
deeper_unfreeze_from), this times a fold's --epochs held-out passes over --images random
images both ways, in alternating rounds, and prints the median seconds of each, their ratio,
and what making the copy and its cut took.
Random pixels and weights cost what real ones do (the same operations on the same shapes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np


def time_fold(predictor, images: np.ndarray, epochs: int) -> float:
    """Seconds for one fold's held-out passes: `epochs` calls of a fresh predictor of `images`."""
    start = time.perf_counter()
    predict = predictor(images)
    for _ in range(epochs):
        predict()
    return time.perf_counter() - start


def measure(name: str, n_images: int, epochs: int, rounds: int, batch: int, log) -> list[dict]:
    from edgetl.compiler.training.cv_training import HeldOutScorer
    from edgetl.models import create_model, get_config

    config = get_config(name)
    model = create_model(name, weights=None, num_classes=12)
    images = np.random.default_rng(0).integers(0, 256, (n_images, config.input_size, config.input_size, 3)).astype(np.uint8)
    rows = []
    for depth, layer in (("top", config.unfreeze_from), ("deeper", config.deeper_unfreeze_from)):
        if layer is None:
            continue
        start = time.perf_counter()
        scorer = HeldOutScorer(model, layer, batch)  # once per recipe in a compile: the copy and its cut
        setup = time.perf_counter() - start
        if scorer.twin is None:
            log(f"{name} from {layer}: no cut (the whole model runs every epoch)")
            continue
        def whole_model(x, scorer=scorer):  # what a fold that cannot be cut runs
            return lambda: scorer.whole(x)

        ways = {"whole": whole_model, "cut": scorer.predictor}
        for predictor in ways.values():  # warm-up: traces both ways
            time_fold(predictor, images[:batch], 2)
        seconds = {"whole": [], "cut": []}
        for r in range(rounds):
            for way in (("whole", "cut") if r % 2 == 0 else ("cut", "whole")):
                seconds[way].append(time_fold(ways[way], images, epochs))
                log(f"{name} from {layer}, round {r + 1}: {way} {seconds[way][-1]:.1f} s")
        whole_s, cut_s = statistics.median(seconds["whole"]), statistics.median(seconds["cut"])
        rows.append({"model": name, "depth": depth, "layer": layer, "whole_s": whole_s, "cut_s": cut_s,
                     "ratio": cut_s / whole_s, "setup_s": setup})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgetl.benchmarks.held_out_pass", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="efficientnet_lite2,efficientnet_lite0,resnet50")
    parser.add_argument("--images", type=int, default=224, help="held-out images of a fold (a third of 672)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of the fold (--finetune-epochs' default)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32, help="the compile's --batch-size default")
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    rows = [row for name in args.models.split(",") for row in measure(name, args.images, args.epochs, args.rounds, args.batch, log)]
    print(f"one fold's held-out passes: {args.images} images x {args.epochs} epochs, median of {args.rounds} rounds")
    print(f"{'model':20} {'from':24} {'whole model':>12} {'frozen cut':>11} {'cut/whole':>10} {'copy and cut, once':>19}")
    for r in rows:
        print(f"{r['model']:20} {r['layer']:24} {r['whole_s']:10.1f} s {r['cut_s']:9.1f} s {r['ratio']:9.2f}x {r['setup_s']:17.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
