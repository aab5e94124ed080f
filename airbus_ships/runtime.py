"""Where and how TensorFlow runs: device choice and thread pools, the ``tf.distribute`` strategy, which process
writes the run folder, and the Keras 3.15 workarounds distributed ``fit`` needs (train.py; test.py and the studies
use :func:`setup_device`)."""
from __future__ import annotations

import hashlib
import os
import sys

import keras
import numpy as np
import tensorflow as tf


def setup_device(device: str, threads: int = 0) -> None:
    """Pin TensorFlow to the CPU, or require a GPU; cap its thread pools (before any TensorFlow op runs)."""
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    gpus = tf.config.list_physical_devices("GPU")
    if device == "cpu":
        tf.config.set_visible_devices([], "GPU")
    elif device == "cuda" and not gpus:
        sys.exit("--device cuda: TensorFlow sees no GPU")
    elif device not in ("auto", "cpu", "cuda"):
        sys.exit(f"--device must be auto, cpu or cuda, got {device!r}")


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy: created before any other TensorFlow op (MultiWorkerMirroredStrategy's rule).

    default: one device, no distribution. mirrored: synchronous data parallelism over the local GPUs (the CPU
    when there is none). multiworker: the same across machines; each process reads its cluster and role from
    the ``TF_CONFIG`` environment variable and gradients are all-reduced (ring / NCCL collectives).
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            sys.exit("--strategy multiworker: set TF_CONFIG (cluster and this worker's task; see README)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    sys.exit(f"--strategy must be default, mirrored or multiworker, got {name!r}")


def worker_role(strategy: tf.distribute.Strategy) -> tuple[bool, int]:
    """``(is_chief, task_id)``: the chief is the ``chief`` task, else (a cluster without one) ``worker`` 0, else
    the only process. Exactly one process writes ``--out``."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type, task_id = (resolver.task_type, resolver.task_id) if resolver is not None else (None, 0)
    has_chief = resolver is not None and "chief" in resolver.cluster_spec().as_dict()
    chief = task_type in (None, "chief") or (task_type == "worker" and task_id == 0 and not has_chief)
    return chief, int(task_id or 0)


def vote_to_stop(strategy: tf.distribute.Strategy):
    """``vote(stop: bool) -> bool``: True when any replica wants to stop. Every worker gets the same answer (an
    all-reduce), so none is left waiting in a collective for the others."""
    if strategy.num_replicas_in_sync == 1:
        return bool

    @tf.function
    def votes(stop):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(tf.identity, args=(stop,)), axis=None)

    return lambda stop: float(votes(tf.constant(1.0 if stop else 0.0))) > 0


def fix_distributed_fit(model: keras.Model, strategy: tf.distribute.Strategy) -> None:
    """Work around Keras 3.15 bugs with ``tf.distribute`` strategies (not needed for the default strategy).

    1. Before training and before every validation, ``fit`` builds the model from a batch it takes off the
       iterator; for validation that batch is lost (our fixed validation batches run out) and under
       MultiWorkerMirroredStrategy the build averages the batch across workers (``strategy.reduce("MEAN",
       (x, y))``), which fails on a nested per-replica batch. Build once, from this worker's own first training
       batch (a build needs only shapes and dtypes).
    2. MultiWorkerMirroredStrategy only: it averages each step's logs (loss, metrics) across workers with
       ``strategy.reduce("MEAN", v, axis=0)``, which fails on scalars (tensorflow/tensorflow#72388): average
       them element-wise (``axis=None``). Every worker then logs the same values, so early stopping and the
       LR schedule decide alike everywhere.
    """
    original_build = model._maybe_symbolic_build

    def local(value):
        return strategy.experimental_local_results(value)[0] if isinstance(value, tf.distribute.DistributedValues) \
            else value

    done = []

    def build(iterator=None, data_batch=None):
        if done:  # built at the start of fit: keep the validation batches
            return None
        done.append(True)
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(local, next(it))
                break
        return original_build(data_batch=data_batch)

    model._maybe_symbolic_build = build
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    from keras.src.backend.tensorflow import trainer as tf_trainer  # the module whose helper is patched
    original_reduce = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy_, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy_):
            return tf.nest.map_structure(lambda v: strategy_.reduce("MEAN", v, axis=None), values)
        return original_reduce(values, strategy_, reduction)

    if not getattr(original_reduce, "patched_for_multiworker", False):
        reduce_per_replica.patched_for_multiworker = True
        tf_trainer.reduce_per_replica = reduce_per_replica


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of all weights (the workers of a synchronous run print the same digest)."""
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()
