"""--strategy (compiler/training/distribution.py) on CPU: MirroredStrategy over two logical CPU devices,
two MultiWorkerMirroredStrategy workers on 127.0.0.1, and a compile killed mid-fit that resumes.

Every child process runs under a timeout; ports are loopback only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgetl.compiler.training import distribution
from edgetl.compiler.spec.config import CompileConfig
from edgetl.errors import SettingError

REPO = Path(__file__).resolve().parents[1]
TINY = ["--teacher", "tiny_cnn", "--teacher-weights", "none", "--student", "none", "--selection", "holdout",
        "--quantize", "fp32", "--no-robustness", "--no-cache", "--batch-size", "8", "--debug"]
CHILD_TIMEOUT = 300  # seconds: a hung collective fails the test instead of the suite


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO / "tests"), **extra)
    return env


def test_strategy_names_and_tf_config_are_checked(monkeypatch):
    with pytest.raises(SettingError, match="--strategy 'gpus'"):
        distribution.check("gpus")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(SettingError, match="needs TF_CONFIG"):
        distribution.check("multi-worker")
    for task in ({"type": "worker", "index": 3}, {"type": "chief", "index": 0}, {"type": "worker", "index": -1}):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}, "task": task}))
        with pytest.raises(SettingError, match="but its cluster has"):
            distribution.check("multi-worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(SettingError, match="TF_CONFIG is not valid"):
        distribution.check("multi-worker")
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert not distribution.is_chief()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert distribution.is_chief()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {**cluster, "chief": ["127.0.0.1:3"]}, "task": {"type": "worker", "index": 0}}))
    assert not distribution.is_chief()
    with pytest.raises(Exception, match="strategy"):
        CompileConfig(data="d", out="o", strategy="several").validate()


def test_one_replica_trains_with_the_given_settings():
    """A single device: batch and learning rates exactly as given (today's path)."""
    from edgetl._compat import tf
    from edgetl.compiler.pipeline import _scaled_for

    config = CompileConfig(data="d", out="o", batch_size=16, finetune_learning_rate=1e-4)
    assert _scaled_for(tf.distribute.get_strategy(), config) is config

    class TwoReplicas:
        num_replicas_in_sync = 2

    scaled = _scaled_for(TwoReplicas(), config)
    assert scaled.batch_size == 32 and scaled.finetune_learning_rate == pytest.approx(2e-4)
    assert scaled.distill_learning_rate == pytest.approx(2 * config.distill_learning_rate)


@pytest.mark.slow
def test_mirrored_compile_over_two_logical_cpus(tmp_path):
    """The whole compile under MirroredStrategy with two replicas (two logical CPU devices)."""
    from conftest import write_color_dataset

    data = write_color_dataset(tmp_path / "data", per_class=12)
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        from edgetl._compat import tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from edgetl.cli import main
        main(["compile", {str(data)!r}, "--out", {str(out)!r}, "--strategy", "mirrored", "--finetune-epochs", "2", *{TINY!r}])
    """)
    run = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["distribution"] == {"strategy": "MirroredStrategy", "replicas": 2, "workers": 1, "chief": True}
    assert report["config"]["batch_size"] == 8  # as given; training used 2 x 8
    assert "global batch 16" in run.stdout + run.stderr
    assert report["models"]["teacher"]["training"]["top"]["epochs_run"] == 2
    checked = [a for a in report["artifacts"] if a["parity"]]
    assert {a["file"] for a in checked} >= {"model.tflite", "model.onnx"} and all(a["parity"]["passed"] for a in checked)


SPLIT_CPU_AND_COMPILE = """
import sys
from edgetl._compat import tf
if sys.argv[1] == "mirrored":  # two logical CPU devices: two replicas
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from edgetl.cli import main
main(sys.argv[2:])
"""


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["mirrored", "one"])
def test_pruning_and_qat_train_under_the_strategy(tmp_path, strategy):
    """--prune 0.5 --qat: QAT, pruning and pruning-preserving QAT fine-tune under the compile's
    strategy (two replicas under MirroredStrategy over two logical CPUs, one under --strategy
    one), and their files are built and checked against the Keras models they came from."""
    from conftest import write_color_dataset

    data = write_color_dataset(tmp_path / "data", per_class=12)
    out = tmp_path / "out"
    short = tmp_path / "short.yaml"  # fewer compression epochs than the defaults: the test stays short
    short.write_text("prune_epochs: 2\nqat_epochs: 1\n")
    args = ["compile", str(data), "--recipe", str(short), "--out", str(out), "--strategy", strategy,
            "--prune", "0.5", "--qat", "--finetune-epochs", "1", *TINY, "--quantize", "int8"]
    run = subprocess.run([sys.executable, "-c", SPLIT_CPU_AND_COMPILE, strategy, *args], env=_env(), capture_output=True,
                         text=True, timeout=CHILD_TIMEOUT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    replicas = 2 if strategy == "mirrored" else 1
    assert report["distribution"]["replicas"] == replicas
    trained = report["optimization"]["trained"]
    assert set(trained) == {"int8-qat", "pruning", "int8-qat-pruned50"}
    assert {name: record["replicas"] for name, record in trained.items()} == dict.fromkeys(trained, replicas)
    assert trained["pruning"]["stage"]["epochs_run"] == 2 and trained["int8-qat"]["stage"]["epochs_run"] == 1
    # Learning rates scaled like the training stages' (pipeline._scaled_for): x R.
    given = report["config"]
    assert trained["pruning"]["learning_rate"] == pytest.approx(given["prune_learning_rate"] * replicas)
    assert trained["int8-qat"]["learning_rate"] == pytest.approx(given["qat_learning_rate"] * replicas)
    by_file = {a["file"]: a for a in report["artifacts"]}
    built = ["variants/model.int8-qat.tflite", "variants/model.fp32-pruned50.tflite",
             "variants/model.int8-qat-pruned50.tflite", "variants/model.int8-pruned50.onnx"]
    for name in built:
        assert (out / name).is_file(), name
        assert by_file[name]["parity"]["passed"], (name, by_file[name]["parity"])
    pruned = [by_file[name] for name in built if "pruned50" in name]
    assert all(a["sparsity"] == pytest.approx(0.5, abs=0.05) and "pruned50" in a["parity"]["against"] for a in pruned)


@pytest.mark.slow
def test_two_workers_on_loopback(tmp_path):
    """Two MultiWorkerMirroredStrategy workers: the chief's build is complete and verified, the
    other worker's --out is never created."""
    from conftest import write_color_dataset

    data = write_color_dataset(tmp_path / "data", per_class=12)
    cluster = distribution.loopback_cluster(2)
    outs = [tmp_path / "chief_out", tmp_path / "worker_out"]
    scratch = tmp_path / "tmp"  # the workers' temporary folder
    scratch.mkdir()
    children = []
    for index, out in enumerate(outs):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        command = [sys.executable, "-m", "edgetl.cli", "compile", str(data), "--out", str(out), "--strategy", "multi-worker",
                   "--finetune-epochs", "2", *TINY]
        children.append(subprocess.Popen(command, env=_env(TF_CONFIG=tf_config, TMPDIR=str(scratch)), stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True))
    logs = []
    try:
        for child in children:
            logs.append(child.communicate(timeout=CHILD_TIMEOUT)[0])
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(10)
    assert [c.returncode for c in children] == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    report = json.loads((outs[0] / "report.json").read_text())
    assert report["distribution"] == {"strategy": "MultiWorkerMirroredStrategy", "replicas": 2, "workers": 2, "chief": True}
    checked = [a for a in report["artifacts"] if a["parity"]]
    assert {a["file"] for a in checked} >= {"model.tflite", "model.onnx"} and all(a["parity"]["passed"] for a in checked)
    for name in ("model.tflite", "model.onnx", "teacher.keras", "report.json", "labels.txt"):
        assert (outs[0] / name).is_file(), name
    assert not outs[1].exists()  # the non-chief wrote nothing into its --out
    assert not list(scratch.glob("edgetl-worker-*"))  # and its throw-away build is gone


KILL_SCRIPT = """
import os, sys
from edgetl.compiler.training import finetune

log, kill_after = sys.argv[1], int(sys.argv[2])
begin, end = finetune.EpochProgress.on_epoch_begin, finetune.EpochProgress.on_epoch_end

def on_epoch_begin(self, epoch, logs=None):
    with open(log, "a") as f:
        f.write(f"{os.getpid()} begin {epoch}\\n")

def on_epoch_end(self, epoch, logs=None):
    end(self, epoch, logs)
    if epoch == kill_after:
        os._exit(17)  # killed: no cleanup, as a lost machine

finetune.EpochProgress.on_epoch_begin = on_epoch_begin
finetune.EpochProgress.on_epoch_end = on_epoch_end
from edgetl.cli import main
main(sys.argv[3:])
"""


@pytest.mark.slow
def test_killed_compile_resumes_the_fit_where_it_stopped(tmp_path):
    """Killed after epoch 3 of 5 of the teacher's fine-tuning, the same command run again
    restores the backup (BackupAndRestore) and begins at the 4th epoch, not the first."""
    from conftest import write_color_dataset

    data = write_color_dataset(tmp_path / "data", per_class=12)
    out, log = tmp_path / "out", tmp_path / "epochs.log"
    args = ["compile", str(data), "--out", str(out), "--strategy", "mirrored", "--finetune-epochs", "5",
            "--cache-dir", str(tmp_path / "cache"), *TINY]
    env = _env()
    first = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(log), "2", *args], env=env, capture_output=True,
                           text=True, timeout=CHILD_TIMEOUT)
    assert first.returncode == 17, first.stdout[-3000:] + first.stderr[-3000:]
    backups = list((tmp_path / "cache" / "backup").glob("*/fit-1"))
    assert backups, "no BackupAndRestore folder for the interrupted fit"
    second = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(log), "-1", *args], env=env, capture_output=True,
                            text=True, timeout=CHILD_TIMEOUT)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    runs: dict[str, list[int]] = {}
    for line in log.read_text().splitlines():
        pid, _, epoch = line.split()
        runs.setdefault(pid, []).append(int(epoch))
    first_run, second_run = runs.values()
    assert first_run == [0, 1, 2]
    assert second_run == [3, 4]  # resumed after the last finished epoch, not from epoch 0
    assert (out / "model.tflite").is_file()
    assert not (tmp_path / "cache" / "backup").exists() or not any((tmp_path / "cache" / "backup").iterdir())
