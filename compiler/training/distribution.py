"""Which devices and machines train: `--strategy auto|one|mirrored|multi-worker`.

* ``one``: TensorFlow's default strategy (one device), as edgetl always did.
* ``mirrored``: `tf.distribute.MirroredStrategy` over every visible GPU of this machine (the
  logical CPU devices when there is none: one, unless split for tests).
* ``auto``: ``mirrored`` when more than one GPU is visible, else ``one``.
* ``multi-worker``: `tf.distribute.MultiWorkerMirroredStrategy`, configured by the standard
  ``TF_CONFIG`` environment variable: every machine runs the same `edgetl compile` command with
  its own TF_CONFIG. Each worker reads its own shard of every training batch (tf.data DATA
  sharding, compiler/data/streaming.py). Only the chief (task type ``chief``, or worker 0 when the
  cluster has no chief) writes ``--out`` and the stage cache; the other workers build into a
  temporary folder that is removed at the end.

Batch and learning rate: ``--batch-size`` is per replica (per GPU, per worker). With R replicas
in sync the global batch is R x ``--batch-size`` and every training learning rate is scaled by
R (the linear scaling rule, Goyal et al. 2017), so one replica trains exactly as before and R
replicas take the same number of epochs with R times fewer steps.

Fault tolerance: when training is distributed (any strategy but the default one), every training `fit` gets
`BackupAndRestore` in a folder named after the run (`backup_root`): a worker that dies and is
restarted with the same command resumes the interrupted fit at the epoch after its last
finished one, instead of starting that fit over. (What a fit keeps in memory besides weights
and optimizer, such as the best epoch seen so far by early stopping, starts afresh.)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from edgetl.compiler.spec.modes import Strategy
from edgetl.errors import SettingError

STRATEGIES = Strategy.values()

# Where this process's fits back up to (None: no BackupAndRestore), and how many fits have run:
# the n-th fit of a compile backs up to fit-<n>, the same folder when the command is restarted.
_backup = {"root": None, "fits": 0}


def tf_config() -> dict | None:
    text = os.environ.get("TF_CONFIG")
    if not text:
        return None
    try:
        value = json.loads(text)
        value["cluster"], value["task"]["type"], int(value["task"]["index"])  # noqa: B018 - shape check
    except (ValueError, KeyError, TypeError):
        raise SettingError(
            "TF_CONFIG is not valid: it must be JSON like "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
        ) from None
    task, cluster = value["task"], value["cluster"]
    members = cluster.get(task["type"]) if isinstance(cluster, dict) else None
    if not isinstance(members, list) or not 0 <= int(task["index"]) < len(members):
        size = f"{len(members)} {task['type']} address(es)" if isinstance(members, list) else f"no {task['type']!r} list"
        raise SettingError(
            f"TF_CONFIG names this process {task['type']} {task['index']}, but its cluster has {size}: "
            f"the task index counts from 0 in the cluster's {task['type']!r} list"
        )
    return value


def loopback_cluster(workers: int) -> dict:
    """A TF_CONFIG cluster of `workers` workers on free ports of 127.0.0.1: several workers on one
    machine, as the tests and benchmarks/scale.py run them."""
    import socket

    sockets = [socket.socket() for _ in range(workers)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return {"worker": [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]}
    finally:
        for s in sockets:
            s.close()


def is_chief() -> bool:
    """Whether this process writes --out and the cache: always, unless TF_CONFIG names another chief."""
    config = tf_config()
    if config is None:
        return True
    task = config["task"]
    if "chief" in config["cluster"]:
        return task["type"] == "chief"
    return task["type"] == "worker" and int(task["index"]) == 0


def check(name: str) -> None:
    """Errors a user can cause, before any work."""
    if name not in STRATEGIES:
        raise SettingError(f"--strategy {name!r} is not one of {', '.join(STRATEGIES)}")
    if name == "multi-worker":
        config = tf_config()
        if config is None:
            raise SettingError(
                "--strategy multi-worker needs TF_CONFIG set on every machine, e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
            )


def make_strategy(name: str):
    """The tf.distribute strategy for `name` (call before any model is built)."""
    from edgetl._compat import tf

    check(name)
    if name == "one":
        return tf.distribute.get_strategy()
    if name == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        # Every GPU; without one, every logical CPU device (one, unless the process split its CPU
        # with tf.config.set_logical_device_configuration, as the tests do).
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    # Collective ops over gRPC between the TF_CONFIG workers; RING needs no GPU.
    options = tf.distribute.experimental.CommunicationOptions(implementation=tf.distribute.experimental.CommunicationImplementation.AUTO)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def is_default(strategy) -> bool:
    """Whether `strategy` is TensorFlow's default one-device strategy (call outside any scope)."""
    from edgetl._compat import tf

    return strategy is tf.distribute.get_strategy()


def describe(strategy) -> dict:
    """What the report says about how training ran."""
    replicas = int(strategy.num_replicas_in_sync)
    config = tf_config()
    name = type(strategy).__name__
    # tf.distribute.MultiWorkerMirroredStrategy is an alias of this class: report the public name.
    name = {"CollectiveAllReduceStrategy": "MultiWorkerMirroredStrategy", "_DefaultDistributionStrategy": "default"}.get(name, name)
    return {
        "strategy": name,
        "replicas": replicas,
        "workers": len(config["cluster"].get("worker", [])) + len(config["cluster"].get("chief", [])) if config else 1,
        "chief": is_chief(),
    }


def set_backup(root: Path | None) -> None:
    """Turn BackupAndRestore on (in `root`) or off for the fits that follow."""
    _backup["root"] = None if root is None else Path(root)
    _backup["fits"] = 0


def clear_backup_folder(root: Path | None) -> None:
    """A finished compile: its backups are no longer needed."""
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)


def fit_callbacks() -> list:
    """Callbacks every training fit adds: BackupAndRestore when set_backup turned it on."""
    if _backup["root"] is None:
        return []
    from edgetl._compat import keras

    _backup["fits"] += 1
    folder = _backup["root"] / f"fit-{_backup['fits']}"
    return [keras.callbacks.BackupAndRestore(str(folder))]
