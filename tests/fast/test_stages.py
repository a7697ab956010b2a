"""The stage declaration (compiler/stages/__init__.py): the run is held to it, the dry run lists it, and
the cache keys say which stages a changed setting invalidates. No TensorFlow."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import write_color_dataset
from edgetl.compiler.cache import StageCache
from edgetl.compiler.data.datasets import scan_dataset
from edgetl.compiler.pipeline import plan
from edgetl.compiler.progress import StageTimer
from edgetl.compiler.spec.config import CompileConfig
from edgetl.compiler.stages import EXPORT_FILES, STAGES, StageSequence, stages_for
from edgetl.compiler.stages import stage_keys as _stage_keys


@pytest.fixture
def data(tmp_path):
    return write_color_dataset(tmp_path / "data", per_class=10)


def config(data, tmp_path, **settings) -> CompileConfig:
    base = dict(data=data, out=tmp_path / "out", teacher="tiny_cnn", teacher_weights="none", student="tiny_cnn", student_weights="none")
    return CompileConfig(**{**base, **settings}).resolved()


def names(c: CompileConfig) -> list[str]:
    return [s.name for s in stages_for(c)]


def test_each_setting_adds_or_drops_only_its_own_stages(data, tmp_path):
    every = names(config(data, tmp_path))
    assert every == ["data", "teacher", "student", "baseline", "export", "verify", "optimize", "package", "robustness"]
    assert names(config(data, tmp_path, baseline=False)) == [n for n in every if n != "baseline"]
    assert names(config(data, tmp_path, student="none")) == [n for n in every if n not in ("student", "baseline")]
    assert names(config(data, tmp_path, robustness=False)) == every[:-1]
    adapted = names(config(data, tmp_path, unlabeled=data / "red"))
    assert adapted[adapted.index("adapt") - 1] == "baseline" and adapted[adapted.index("adapt") + 1] == "export"
    assert "adapt" not in names(config(data, tmp_path, unlabeled=data / "red", adapt="none"))


def test_a_stage_out_of_its_declared_order_or_never_run_is_an_internal_error(data, tmp_path):
    c = config(data, tmp_path, student="none")
    timer = StageTimer()
    run = StageSequence(c, timer)
    with run.stage("data", "data"):
        pass
    with pytest.raises(RuntimeError, match="entered stage 'student' where compiler/stages/__init__.py declares 'teacher'"):
        with run.stage("student", "student"):
            pass
    for name in ("teacher", "export", "verify", "optimize", "package"):
        with run.stage(name, name):
            pass
    with pytest.raises(RuntimeError, match="declared stages never ran: robustness"):
        run.finish()
    with run.stage("robustness", "robustness"):
        pass
    run.finish()
    assert list(timer.seconds) == names(c)
    with pytest.raises(RuntimeError, match="no further stage"):
        with run.stage("package", "again"):
            pass


def test_stage_peaks_never_fall_when_a_later_memory_reading_comes_out_lower(monkeypatch):
    from edgetl.runtime import measure

    readings = iter([500.0, 480.0, 900.0])
    monkeypatch.setattr(measure, "peak_rss_mb", lambda: next(readings))
    timer = StageTimer()
    for name in ("data", "teacher", "student"):
        with timer.stage(name):
            pass
    assert timer.peak_mb == {"data": 500.0, "teacher": 500.0, "student": 900.0}


def test_the_dry_run_lists_the_declaration_and_what_the_cache_holds(data, tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    c = config(data, tmp_path, cache_dir=cache_dir)
    first = plan(c)
    assert [s["stage"] for s in first["stages"]] == names(c) and not any(s["cached"] for s in first["stages"])
    # Held entries: the teacher's record and the export's files (as a finished run leaves them).
    keys = _stage_keys(c, scan_dataset(c.data, val_fraction=c.val_fraction, test_fraction=c.test_fraction, seed=c.seed,
                                       selection=c.selection, cv_below=c.cv_below), [])
    (cache_dir / f"teacher-{keys['teacher']}").mkdir(parents=True)
    (cache_dir / f"teacher-{keys['teacher']}" / StageCache.RECORD).write_text("{}")
    export = cache_dir / f"export-{keys['export']}"
    export.mkdir()
    (export / EXPORT_FILES[0]).write_bytes(b"x")
    assert {s["stage"]: s["cached"] for s in plan(c)["stages"]}["export"] is False  # one of two files: not finished
    (export / EXPORT_FILES[1]).write_bytes(b"x")
    capsys.readouterr()
    again = {s["stage"]: s["cached"] for s in plan(c)["stages"]}
    assert again == {n: n in ("teacher", "export") for n in names(c)}
    printed = capsys.readouterr().out.split("stages:\n")[1].splitlines()
    assert [line.split()[0] for line in printed if line.startswith("  ")] == names(c)
    assert plan(dataclasses.replace(c, use_cache=False))["stages"][1]["cached"] is False


def test_the_keys_invalidate_exactly_the_stages_a_setting_changes(data, tmp_path):
    c = config(data, tmp_path)
    dataset = scan_dataset(c.data, val_fraction=c.val_fraction, test_fraction=c.test_fraction, seed=c.seed, selection=c.selection, cv_below=c.cv_below)

    def keys(**changed):
        return _stage_keys(dataclasses.replace(c, **changed), dataset, [])

    base = keys()
    assert keys() == base  # deterministic
    quantization = keys(quantize="fp16", prune=0.5, max_accuracy_drop=2.0)
    assert quantization == base  # quantization is after the float exports: nothing cached changes
    hotter = keys(temperature=4.0)
    assert hotter["teacher"] == base["teacher"] and hotter["student_head"] == base["student_head"]
    assert hotter["student"] != base["student"] and hotter["export"] != base["export"] and hotter["baseline"] == base["baseline"]
    longer = keys(finetune_epochs=c.finetune_epochs + 1)
    assert all(longer[k] != base[k] for k in ("teacher", "student", "export")) and longer["baseline"] == base["baseline"]
    teacher_only = keys(student="none")
    assert teacher_only["export"] != base["export"] and "student" not in teacher_only
    unlabeled = sorted((data / "red").iterdir())
    from edgetl.compiler.data.datasets import scan_unlabeled

    adapted = _stage_keys(dataclasses.replace(c, unlabeled=data / "red"), dataset, scan_unlabeled(data / "red")[0])
    assert unlabeled and adapted["adapt"] and adapted["export"] != base["export"] and adapted["teacher"] == base["teacher"]


def test_every_declared_stage_has_a_unique_name_and_known_cache_entries(data, tmp_path):
    assert len({s.name for s in STAGES}) == len(STAGES)
    c = config(data, tmp_path, unlabeled=data / "red")
    dataset = scan_dataset(c.data, val_fraction=c.val_fraction, test_fraction=c.test_fraction, seed=c.seed, selection=c.selection, cv_below=c.cv_below)
    from edgetl.compiler.data.datasets import scan_unlabeled

    keys = _stage_keys(c, dataset, scan_unlabeled(data / "red")[0])
    assert {entry for s in stages_for(c) for entry in s.caches} <= set(keys)


def test_the_data_key_follows_the_files_bytes_from_the_scans_digests(data, tmp_path, monkeypatch):
    c = config(data, tmp_path)

    def scan():
        return scan_dataset(c.data, val_fraction=c.val_fraction, test_fraction=c.test_fraction, seed=c.seed, selection=c.selection,
                            cv_below=c.cv_below)

    from edgetl.compiler import stages

    first = _stage_keys(c, scan(), [])
    # The scan already read every labelled file; the keys must not read them again.
    monkeypatch.setattr(stages, "hash_files", lambda *a, **k: pytest.fail("labelled files hashed a second time"))
    monkeypatch.setattr(stages, "file_digest", lambda *a, **k: pytest.fail("a labelled file read a second time"))
    assert _stage_keys(c, scan(), []) == first
    photo = min(p for p in data.rglob("*") if p.is_file())
    photo.write_bytes(photo.read_bytes() + b"\0")  # same name, different bytes
    changed = _stage_keys(c, scan(), [])
    assert changed["teacher"] != first["teacher"] and changed["data"] != first["data"]


def test_a_student_size_with_no_student_is_said_to_be_unused(data, tmp_path, capsys):
    from edgetl.compiler.pipeline import compile_model

    compile_model(CompileConfig(data=data, out=tmp_path / "out", teacher="tiny_cnn", teacher_weights="none", student="none",
                                student_size="auto"), dry_run=True)
    assert "note: --student-size auto is not used: with --student none the teacher is deployed at its own input size" in " ".join(
        capsys.readouterr().err.split())  # notes go to stderr, the recipe and plan to stdout
