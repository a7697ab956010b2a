"""--student-size auto: the sizes tried, the rule that keeps one, and the setting itself."""

from __future__ import annotations

import numpy as np
import pytest
from edgetl.compiler.spec.config import CompileConfig
from edgetl.compiler.stages.resolution import (
    SizeCandidate,
    SlimOption,
    candidate_sizes,
    choose,
    narrower_students,
    out_of_size_order,
    slim_advice,
    slim_chains,
    time_in_size_order,
)

from edgetl.errors import SettingError


def size(px: int, correct: int, p50: float, n: int = 100) -> SizeCandidate:
    """A measured size: `correct` of `n` training images right out of fold, int8 p50 in ms."""
    return SizeCandidate(px, np.arange(n) < correct, p50_ms=p50)


def test_the_sizes_tried_are_the_mobilenet_resolutions_scaled_to_the_model():
    assert candidate_sizes(224) == [224, 192, 160, 128]
    assert candidate_sizes(260) == [260, 224, 184, 152]  # EfficientNet-Lite2
    assert candidate_sizes(32) == [32, 24, 16]  # rounding can merge two; never below 16 px
    assert all(s % 8 == 0 for s in candidate_sizes(300)[1:])


def test_without_a_budget_the_fastest_size_within_the_drop_is_kept():
    sizes = [size(224, 97, 5.0), size(192, 97, 3.7), size(160, 96, 2.6), size(128, 93, 1.7)]
    chosen, why = choose(sizes, max_drop_points=1.0, max_latency_ms=None)
    assert chosen.size == 160 and why.startswith("160 px: the fastest")
    assert sizes[3].gate.startswith("failed: 4.00 points below 224 px") and "128 px rejected" in why
    # A stricter drop keeps 192 px, the fastest that loses nothing.
    assert choose(sizes, max_drop_points=0.0, max_latency_ms=None)[0].size == 192


def test_p50s_within_the_tie_keep_the_more_accurate_size():
    # 160 px is 10% faster than 192 px (within the 15% measurement tie) and one image worse.
    sizes = [size(224, 97, 5.0), size(192, 97, 2.9), size(160, 96, 2.64)]
    assert choose(sizes, max_drop_points=1.0, max_latency_ms=None)[0].size == 192


def test_a_latency_budget_keeps_the_most_accurate_size_that_meets_it():
    sizes = [size(224, 97, 5.0), size(192, 98, 3.7), size(160, 96, 2.6), size(128, 93, 1.7)]
    chosen, why = choose(sizes, max_drop_points=1.0, max_latency_ms=4.0)
    assert chosen.size == 192 and "within the 4 ms budget" in why
    assert choose(sizes, max_drop_points=1.0, max_latency_ms=3.0)[0].size == 160
    # 128 px meets 2 ms but fails the accuracy gate: the budget never deploys a rejected size.
    chosen, why = choose(sizes, max_drop_points=1.0, max_latency_ms=2.0)
    assert chosen.size == 160 and "NO size" in why


def test_the_own_size_is_kept_when_every_smaller_one_loses_accuracy():
    sizes = [size(224, 97, 5.0), size(192, 94, 3.7), size(160, 90, 2.6)]
    chosen, why = choose(sizes, max_drop_points=1.0, max_latency_ms=None)
    assert chosen.size == 224 and "192 px rejected" in why and "160 px rejected" in why


def test_auto_is_a_setting_from_every_source(tmp_path):
    assert CompileConfig(data=tmp_path, out=tmp_path, student_size="auto").chooses_student_size
    assert CompileConfig(data=tmp_path, out=tmp_path, student_size="160").student_size == 160  # a recipe's text
    assert not CompileConfig(data=tmp_path, out=tmp_path, student_size="auto", student="none").chooses_student_size
    assert CompileConfig(data=tmp_path, out=tmp_path, student_size="auto").resolved().student_size == "auto"
    with pytest.raises(SettingError, match="--student-size 'big' must be a whole number of pixels .* 'auto'"):
        CompileConfig(data=tmp_path, out=tmp_path, student_size="big")
    with pytest.raises(SettingError, match="--student-size auto times each size on this machine"):
        CompileConfig(data=tmp_path, out=tmp_path, student_size="auto", strategy="multi-worker")


def test_the_command_line_takes_auto_or_pixels_and_the_dry_run_names_the_sizes(tmp_path, capsys):
    from conftest import write_color_dataset

    from edgetl.cli import main

    def run(*args):
        try:
            code = main(list(args))
        except SystemExit as exc:  # typer's own refusals exit
            code = exc.code
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    code, output = run("compile", str(tmp_path), "--student-size", "tiny")
    assert code != 0 and "'tiny' is neither a whole number of pixels (32 or more) nor 'auto'" in output
    data = write_color_dataset(tmp_path / "data")
    code, output = run("compile", str(data), "--out", str(tmp_path / "o"), "--teacher", "efficientnet_lite0",
                       "--student-size", "auto", "--dry-run")
    assert code == 0 and "student_size: auto" in output
    assert "the student's probe at 224, 192, 160, 128 px" in output


def test_a_smaller_size_that_recovers_after_a_larger_one_failed_is_not_kept():
    # The demo's textures, out of fold on 160 images: 192 px two images down, 128 px level again.
    sizes = [size(224, 159, 5.3, n=160), size(192, 157, 4.2, n=160), size(160, 158, 3.1, n=160), size(128, 159, 1.8, n=160)]
    chosen, why = choose(sizes, max_drop_points=1.0, max_latency_ms=None)
    assert chosen.size == 224
    assert sizes[2].gate == sizes[3].gate == "not considered: 192 px, a larger size, failed"
    assert "128 px rejected (not considered" in why


def test_the_narrower_students_are_the_channel_pruned_variants_widest_first():
    assert narrower_students("efficientnet_lite0") == ["efficientnet_lite0_slim75", "efficientnet_lite0_slim50"]
    assert narrower_students("tiny_cnn") == ["tiny_cnn_slim50"]
    assert narrower_students("efficientnet_lite2") == [] and narrower_students("efficientnet_lite0_slim50") == []
    # A slim student's narrower variants are its base model's with fewer channels kept.
    assert narrower_students("efficientnet_lite0_slim75") == ["efficientnet_lite0_slim50"]


def slim(model: str, px: int, p50: float) -> SlimOption:
    return SlimOption(model, px, p50_ms=p50, p50_vs_own_size=p50 / 2.6)


def test_a_budget_no_size_meets_names_the_widest_cut_at_the_largest_size_within_it():
    # As _time_slim_options orders them: widest variant first, largest passing size first.
    options = [slim("lite0_slim75", 224, 2.1), slim("lite0_slim75", 192, 1.6), slim("lite0_slim75", 160, 1.23),
               slim("lite0_slim50", 224, 1.56), slim("lite0_slim50", 192, 1.2), slim("lite0_slim50", 160, 0.85)]
    pick, clause = slim_advice(options, max_latency_ms=1.3)
    # slim50 at 192 px is faster and also within the budget, but cuts more channels: not named.
    assert (pick.model, pick.size) == ("lite0_slim75", 160)
    assert "lite0_slim75 at 160 px is 1.23 ms" in clause and "distilled after the full student" in clause
    assert "x the student's own size;" in clause
    assert "x the 224 px lite0 file;" in slim_advice(options, 1.3, "the 224 px lite0 file")[1]
    assert slim_advice(options, max_latency_ms=1.0)[0] is options[5]  # only slim50 at 160 px is that fast
    # Nothing within the budget: nothing to compile, and the fastest is named with its figure.
    pick, clause = slim_advice(options, max_latency_ms=0.5)
    assert pick is None and "nor does a channel-pruned student" in clause and "lite0_slim50 at 160 px, is 0.85 ms" in clause
    assert slim_advice([], max_latency_ms=0.5) == (None, "")


def test_a_smaller_size_timed_slower_beyond_the_tie_is_out_of_order():
    # Indices 0-2: one graph at 224, 192, 160 px; 3-4: another at 224, 160 px.
    chains = [[0, 1, 2], [3, 4]]
    assert out_of_size_order([5.0, 3.7, 2.6, 4.0, 2.0], chains) == []
    assert out_of_size_order([5.0, 5.5, 2.6, 4.0, 2.0], chains) == []  # 10% slower: within the 15% tie
    assert out_of_size_order([1.74, 2.59, 0.99, 4.0, 2.0], chains) == [(0, 1)]  # seen beside another compile
    assert out_of_size_order([5.0, 3.7, 2.6, 1.0, 2.0], chains) == [(3, 4)]  # across graphs nothing is implied


def test_timings_out_of_size_order_are_taken_again_and_a_lasting_disorder_is_reported(monkeypatch):
    from edgetl.compiler.compression import optimize

    def timings(*answers):
        """Each call of the timer returns the next of `answers`; the rounds it was asked for are kept."""
        answers, calls = list(answers), []

        def fake(sessions, label, rounds=3, runs=30):
            calls.append(rounds)
            return list(answers.pop(0))

        monkeypatch.setattr(optimize, "best_p50_interleaved", fake)
        return calls

    calls = timings([5.0, 3.7, 2.6])
    assert time_in_size_order([None] * 3, [[0, 1, 2]], "sizes") == ([5.0, 3.7, 2.6], "") and calls == [3]
    # A burst during 192 px's turns: timed again, each file keeps its faster figure.
    calls = timings([1.74, 2.59, 0.99], [1.9, 1.3, 1.1])
    p50s, note = time_in_size_order([None] * 3, [[0, 1, 2]], "sizes")
    assert p50s == [1.74, 1.3, 0.99] and note.startswith("timed twice") and calls == [3, 6]
    calls = timings([1.74, 2.59, 0.99], [1.9, 2.4, 1.1])
    p50s, note = time_in_size_order([None] * 3, [[0, 1, 2]], "sizes")
    assert p50s == [1.74, 2.4, 0.99] and "may be noise" in note and "--student-size" in note


def test_slim_timings_must_fall_with_pixels_and_with_channels():
    # Index 0: the own (224 px, full width) file; then the options as _time_slim_options orders them.
    options = [slim("lite0_slim75", 224, 2.0), slim("lite0_slim75", 160, 1.0), slim("lite0_slim50", 224, 1.5), slim("lite0_slim50", 160, 0.8)]
    assert slim_chains(options, own_size=224) == [[1, 2], [3, 4], [0, 1, 3], [2, 4]]
    # slim50 at 160 px timed slower than slim75 at 160 px: out of order (seen under load), so timed again.
    assert out_of_size_order([2.6, 2.0, 0.7, 1.5, 0.9], slim_chains(options, own_size=224)) == [(2, 4)]
