"""One typed configuration: modes as str Enums, one validating constructor, plain values in files,
and the same cache keys as when the modes were plain strings."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from edgetl.compiler.cache import stage_key
from edgetl.compiler.spec import modes
from edgetl.compiler.spec.config import _MODE_FIELDS, CompileConfig
from edgetl.errors import SettingError

ALL_MODES = [m for m in vars(modes).values() if isinstance(m, type) and issubclass(m, modes.Mode) and m is not modes.Mode]


@pytest.mark.parametrize("mode", ALL_MODES, ids=lambda m: m.__name__)
def test_a_mode_is_its_plain_string_everywhere(mode):
    for member in mode:
        value = member.value
        assert type(value) is str and member == value and str(member) == value and f"{member}" == value
        assert f"{member:>10}" == f"{value:>10}"
        assert hash(member) == hash(value) and {value: 1}[member] == 1 and member in {value}
        assert json.dumps(member) == json.dumps(value)
        # The stage cache hashes settings with json.dumps(default=str): a member keys like its string.
        assert stage_key("s", setting=member, nested={"x": [member]}) == stage_key("s", setting=value, nested={"x": [value]})


def test_every_choice_field_is_typed_by_its_mode():
    assert {name: mode for name, (mode, _) in _MODE_FIELDS.items()} == {
        "quantize": modes.Quantize, "io_dtype": modes.IoDtype, "adapt": modes.Adapt, "mixed_precision": modes.MixedPrecision,
        "strategy": modes.Strategy, "selection": modes.Selection, "preprocess": modes.Preprocess,
        "channel_order": modes.ChannelOrder, "model_output": modes.ModelOutput,
    }
    assert [name for name, (_, optional) in _MODE_FIELDS.items() if optional] == ["quantize", "io_dtype", "preprocess", "channel_order"]


def test_building_a_config_checks_it_and_types_its_choices(tmp_path):
    config = CompileConfig(data=tmp_path, out=tmp_path / "o", quantize="int8", strategy="multi-worker", selection="cv")
    assert config.quantize is modes.Quantize.INT8 and config.strategy is modes.Strategy.MULTI_WORKER
    assert config.selection == "cv" and config.adapt is modes.Adapt.AUTO
    assert config.resolved().io_dtype is modes.IoDtype.UINT8  # filled in by resolved(): typed too
    # Every source builds a CompileConfig, so a bad value never gets past the constructor.
    with pytest.raises(SettingError, match=r"--quantize 'int4' must be one of auto, fp32, fp16, dynamic, int8 \(or left unset\)"):
        CompileConfig(data=tmp_path, out=tmp_path / "o", quantize="int4")
    with pytest.raises(SettingError, match=r"--selection None must be one of auto, cv, holdout \(setting selection\)"):
        CompileConfig(data=tmp_path, out=tmp_path / "o", selection=None)
    with pytest.raises(SettingError, match="--batch-size 0"):
        dataclasses.replace(config, batch_size=0)


def test_files_hold_plain_values_and_old_recipes_load(tmp_path):
    from edgetl.compiler.spec.recipe import load_recipe, recipe_text

    config = CompileConfig(data=tmp_path, out=tmp_path / "o", quantize="fp16", mixed_precision="off", preprocess=None).resolved()
    settings = config.to_json()
    assert all(not isinstance(v, modes.Mode) for v in settings.values())
    assert type(settings["quantize"]) is str and settings["quantize"] == "fp16"
    text = recipe_text(config)
    assert yaml.safe_load(text)["mixed_precision"] == "off"  # quoted by YAML, read back as the string
    # A recipe as edgetl wrote it before the modes were typed: plain strings.
    old = tmp_path / "recipe.yaml"
    old.write_text(f"data: {tmp_path}\nout: {tmp_path / 'o'}\nquantize: int8\nio_dtype: int8\nstrategy: one\nselection: holdout\nadapt: none\n")
    loaded = CompileConfig(**load_recipe(old))
    assert (loaded.quantize, loaded.io_dtype, loaded.strategy, loaded.selection, loaded.adapt) == ("int8", "int8", "one", "holdout", "none")
    assert loaded.io_dtype is modes.IoDtype.INT8


def test_stage_keys_are_those_of_plain_string_settings(tmp_path):
    """The same settings key the same cached stages as before the modes were typed."""
    from conftest import write_color_dataset
    from edgetl.compiler.data.datasets import scan_dataset
    from edgetl.compiler.pipeline import run_id
    from edgetl.compiler.stages import stage_keys as _stage_keys

    data = write_color_dataset(tmp_path / "data")
    dataset = scan_dataset(data, val_fraction=0.15, test_fraction=0.15, seed=0, selection="holdout")
    typed = CompileConfig(data=data, out=tmp_path / "o", teacher="tiny_cnn", student="tiny_cnn", quantize="int8", selection="holdout",
                          strategy="one", mixed_precision="off").resolved()
    plain = typed.resolved()
    for name in _MODE_FIELDS:  # as the config held them before: plain strings
        value = getattr(plain, name)
        object.__setattr__(plain, name, None if value is None else str.__str__(value))
    assert type(plain.quantize) is str and isinstance(typed.quantize, modes.Mode)
    assert _stage_keys(typed, dataset, []) == _stage_keys(plain, dataset, [])
    assert run_id(typed) == run_id(plain)


def test_values_edgetl_derives_for_training_are_not_held_to_the_users_ranges(tmp_path):
    """Eight replicas of the largest per-replica batch make a global batch of 32768: training
    uses it, though a user may not give more than 4096 per replica."""
    from edgetl.compiler.pipeline import _scaled_for

    class EightReplicas:
        num_replicas_in_sync = 8

    config = CompileConfig(data=tmp_path, out=tmp_path / "o", batch_size=4096)
    scaled = _scaled_for(EightReplicas(), config)
    assert scaled.batch_size == 8 * 4096 and config.batch_size == 4096 and scaled.quantize is config.quantize
    with pytest.raises(SettingError, match="--batch-size 32768"):
        dataclasses.replace(scaled)  # the user's way in is still checked
    with pytest.raises(TypeError, match="batch"):
        config.for_training(batch=1)


def test_a_kept_probe_is_refit_unless_the_model_is_then_adapted(tmp_path):
    """The adaptation's clean-accuracy guard reads val: the head must not have been fit on it."""
    plain = CompileConfig(data=tmp_path, out=tmp_path / "o")
    assert plain.refits_kept_probe and not plain.adapts
    adapted = CompileConfig(data=tmp_path, out=tmp_path / "o", unlabeled=tmp_path, adapt="bn")
    assert adapted.adapts and not adapted.refits_kept_probe
    unadapted = CompileConfig(data=tmp_path, out=tmp_path / "o", unlabeled=tmp_path, adapt="none")
    assert unadapted.refits_kept_probe


def test_a_student_that_is_the_teachers_own_network_is_noticed(tmp_path):
    """Lite0 distilled into Lite0 at 224 px from the same ImageNet weights trains one model twice:
    the compile says so (it does not change the choice). A smaller size, another network, other
    starting weights or --unlabeled images make the student something else."""
    base = {"data": tmp_path, "out": tmp_path / "o", "teacher": "efficientnet_lite0", "student": "efficientnet_lite0", "mixed_precision": "off"}
    assert CompileConfig(**base).resolved().distils_into_itself()
    assert CompileConfig(**base, target="android-cpu").resolved().distils_into_itself()  # the target's size is 224 too
    assert not CompileConfig(**base, student_size=160).resolved().distils_into_itself()
    assert not CompileConfig(**{**base, "teacher": "efficientnet_lite2"}).resolved().distils_into_itself()
    assert not CompileConfig(**base, unlabeled=tmp_path).resolved().distils_into_itself()
    assert not CompileConfig(**{**base, "student": "none"}).resolved().distils_into_itself()
