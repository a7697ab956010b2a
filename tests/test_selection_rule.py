"""benchmarks/selection_rule.py: its point-estimate arm runs edgetl's own CLI with only the rule switched off."""

from __future__ import annotations

import numpy as np
import pytest


def test_the_point_arm_switches_off_the_rule_and_nothing_else(monkeypatch, capsys):
    from edgetl.benchmarks import selection_rule
    from edgetl.compiler.training import crossval, cv_training

    monkeypatch.setattr(cv_training, "choose_recipe", cv_training.choose_recipe)  # restored afterwards
    with pytest.raises(SystemExit) as exit_:
        selection_rule.main([selection_rule.POINT_CHILD, "compile", "--help"])
    assert exit_.value.code == 0 and "--cv-below" in capsys.readouterr().out  # the CLI ran, as a user would call it
    probe = np.array([True] * 80 + [False] * 20)
    slightly = np.array([True] * 82 + [False] * 18)  # +2 of 100: within noise
    assert crossval.choose_recipe(np.stack([probe, slightly])[None], folds=5).epochs == 0
    assert cv_training.choose_recipe(np.stack([probe, slightly])[None], folds=5).epochs == 1
