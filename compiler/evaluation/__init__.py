"""Scoring: accuracy of every artefact, intervals and paired differences, robustness to corruptions."""
