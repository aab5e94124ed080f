"""Train the ship U-Net on Kaggle Airbus data.

    python airbus_ships/train.py --data data/airbus --out runs/airbus          # demo data
    python airbus_ships/train.py --data /path/to/airbus-ship-detection         # Kaggle: train_v2/ + CSV
    python airbus_ships/train.py --out runs/airbus --resume                    # continue a run
    python airbus_ships/train.py --strategy mirrored                           # all local GPUs (tf.distribute)
    TF_CONFIG='{...}' python airbus_ships/train.py --strategy multiworker      # one process per machine (README)

Reads top to bottom: config -> distribution strategy -> data (mask table, split by image, streaming tf.data
pipeline, one input pipeline per worker) -> model (U-Net, BCE + dice, Adam, built in the strategy's scope) ->
fit (checkpoints, CSV log, early stopping, time budget) -> choose the ship / no-ship rule on the validation
images (topped up with training images when fewer than --calib-images) -> training-curve plot.

``--batch-size`` is per replica: the global batch is ``batch_size x strategy.num_replicas_in_sync``. With
several workers only the chief (``chief`` task, or ``worker`` 0) writes into ``--out``; the other workers write
their copies into a temporary folder that is deleted at the end (as in TensorFlow's multi-worker tutorial).

Outputs in ``--out``: ``model/best.keras`` (lowest validation loss), ``model/last.keras`` (for --resume),
``model/config.json`` (this run's settings), ``model/postprocess.json`` (the ship rule test.py applies),
``model/train_state.json`` (epoch, early-stopping and learning-rate-plateau counters, for --resume),
``split.csv`` (ImageId, subset train / val: ``test.py --split RUN/split.csv --subset val`` scores the validation
images only), ``data_problems.txt`` (every row or image dropped, when any), ``train_log.csv``,
``training_curves.png`` and ``train_summary.json``.

``--resume`` and ``--calibrate-only`` continue a run: its ``model/config.json`` replaces the defaults and only
the options given on the command line override it; a change of the architecture, the input, the loss, the
learning rate or the split (``LOCKED_ON_RESUME``) is refused.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the logs

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

from airbus_ships.callbacks import (AtomicModelCheckpoint, ResumableCSVLogger, ResumableEarlyStopping,  # noqa: E402
                                    ResumableReduceLROnPlateau, SaveTrainState, TimeBudget)
from airbus_ships.data import (SIZE, find_layout, make_dataset, read_mask_table, ship_instances,  # noqa: E402
                               split_by_image)
from airbus_ships.inference import HOWS, ShipRule, calibrate_rule, calibration_rows, predict_probs  # noqa: E402
from airbus_ships.losses import (CUSTOM_OBJECTS, SmallShipBceDiceLoss, bce_dice_loss, dice_coef,  # noqa: E402
                                  iou_coef)
from airbus_ships.model import LITE0_PREFIX, build_unet  # noqa: E402
from airbus_ships.runtime import fix_distributed_fit, make_strategy, setup_device, weights_digest, worker_role  # noqa: E402
from common.config import add_config_args  # noqa: E402
from common.io import ImageReadError, atomic_write, read_rgb, write_json  # noqa: E402


@dataclass
class Config:
    data: str = "data/airbus"       # Kaggle-layout folder: images/ + masks.csv, or train_v2/ + train_ship_segmentations_v2.csv
    csv: str = ""                   # mask table to use instead of the one in --data (e.g. a split's rows)
    out: str = "runs/airbus"        # run folder: model/ (*.keras, config.json, postprocess.json), split.csv,
    #                                 train_log.csv, training_curves.png
    seed: int = 0                   # split, sampling, augmentation and weight initialisation: the same split,
    #                                 initial weights and training / validation batches every run (and after
    #                                 --resume, the batches the uninterrupted run would have seen)
    device: str = "auto"            # auto | cpu | cuda
    strategy: str = "default"       # default (one device) | mirrored (all local GPUs) | multiworker (TF_CONFIG)
    threads: int = 0                # TensorFlow intra- and inter-op threads (0: TensorFlow's choice)
    val_fraction: float = 0.15      # share of images (stratified ship / no ship) held out for validation
    input_mode: str = "crop"        # crop: full-resolution 256 crops | resize: whole image downscaled (see README)
    input_size: int = 256           # network input side during training
    empty_share: float = 0.25       # share of sampled training images without ships (0: ship images only, 1: ship-free
    #                                 only; Kaggle: 78%)
    ship_crop_prob: float = 0.8     # share of ship-image crops centred on a ship (else anywhere)
    ship_sampling: str = "pixel"    # what ship crops centre on: pixel (a random ship pixel: large ships more often) |
    #                                 instance (a ship drawn uniformly; measured worse, EXPERIMENTS.md: run J)
    encoder: str = "efficientnet_lite0"  # efficientnet_lite0 (ImageNet-pretrained, README: Results) | scratch
    encoder_lr_scale: float = 0.1   # efficientnet_lite0: the encoder's learning rate as a fraction of --lr
    widths: str = "8,16,32,64,128"  # filters per level, the count is the depth (efficientnet_lite0: decoder only, 5)
    bottleneck_rates: str = "1,2,4"  # dilation rates of the multi-level bottleneck branches
    batch_size: int = 8             # per replica (global batch = batch_size x replicas)
    lr: float = 1e-3                # Adam learning rate (halved when the validation loss stalls)
    small_ship_weight: float = 5.0  # extra BCE weight of ship pixels with little ship around them (0: plain BCE + dice;
    #                                 5: ahead on average over 3 runs each, within the seed spread;
    #                                 EXPERIMENTS.md: runs I-O)
    border_weight: float = 0.0      # extra BCE weight of the sea right around ships (the wake's head, the water
    #                                 between moored ships), falling off linearly over --border-width (0: none)
    border_width: int = 6           # px from a ship that --border-weight reaches
    lovasz_weight: float = 0.0      # adds this x the Lovasz hinge loss (a surrogate of each image's 1 - IoU; 0: none)
    epochs: int = 40                # upper bound; early stopping and the time budget usually end sooner
    steps_per_epoch: int = 40       # batches per epoch (the stream is endless; an epoch is a reporting unit)
    val_steps: int = 12             # validation batches per epoch (the same cached batches every epoch)
    patience: int = 12              # early stopping patience (epochs without a lower validation loss;
    #                                 EXPERIMENTS.md: Patience)
    time_budget_min: float = 27.0   # the whole run (start-up, fit, ship-rule choice) within this many minutes: no
    #                                 epoch starts that would leave too little time for the rule (0: no limit)
    calib_images: int = 200         # images the ship / no-ship rule is chosen on: validation first, then training
    calib_val_only: bool = False    # choose the rule on validation images only (no top-up with training images)
    check_images: bool = True       # open every image's header once before training (size, readable, JPEG end):
    #                                 bad images are named and left out (~0.1 ms an image)
    predict_how: str = "auto"       # how the rule's probabilities are predicted, as test.py --how: auto (the whole
    #                                 image up to 1024x1024 px, else tiled) | full | tile (256x256 tiles)
    resume: bool = False            # continue from out/model/last.keras, train_state.json and train_log.csv, with the
    #                                 run's config.json (options given now override it, not the locked ones)
    calibrate_only: bool = False    # no training: re-choose the ship rule for out/model/best.keras (config as --resume)

    @property
    def model_dir(self) -> Path:
        return Path(self.out) / "model"


CHOICES = {"device": ("auto", "cpu", "cuda"), "strategy": ("default", "mirrored", "multiworker"),
           "input_mode": ("crop", "resize"), "ship_sampling": ("pixel", "instance"),
           "encoder": ("efficientnet_lite0", "scratch"), "predict_how": HOWS}
# what --resume / --calibrate-only may not change: the network, its input, its loss and optimiser (both inside
# last.keras) and the train / validation split (seed, val_fraction)
LOCKED_ON_RESUME = ("encoder", "widths", "bottleneck_rates", "input_mode", "input_size", "small_ship_weight",
                    "border_weight", "border_width", "lovasz_weight", "lr", "encoder_lr_scale", "seed", "val_fraction")


def parse_args(argv=None) -> Config:
    """The settings: defaults overridden by the options given; with --resume / --calibrate-only the run's saved
    config.json takes the place of the defaults (:func:`continue_config`)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_args(p, Config, choices=CHOICES)
    cfg = Config(**vars(p.parse_args(argv)))
    if cfg.resume or cfg.calibrate_only:
        cfg = continue_config(cfg, given_options(p, argv))
    why = config_problem(cfg)
    if why:
        p.error(why)
    return cfg


def config_problem(cfg: Config) -> str | None:
    """Why the settings cannot train (an option and its value), or None: checked before any data is read or any
    epoch runs, instead of a traceback from deep inside pandas or TensorFlow, or a run that trains and then dies
    (``--calib-images 0`` used to fail after the fit, ``--epochs 0`` in the curve plot)."""
    at_least = {"epochs": 1, "steps_per_epoch": 1, "val_steps": 1, "batch_size": 1, "calib_images": 1, "threads": 0,
                "patience": 0, "time_budget_min": 0, "encoder_lr_scale": 0, "small_ship_weight": 0, "border_weight": 0,
                "border_width": 1, "lovasz_weight": 0}
    for name, low in at_least.items():
        if getattr(cfg, name) < low:
            return f"--{name.replace('_', '-')} must be at least {low}, got {getattr(cfg, name):g}"
    for name in ("empty_share", "ship_crop_prob"):
        if not 0 <= getattr(cfg, name) <= 1:
            return f"--{name.replace('_', '-')} must be within 0..1, got {getattr(cfg, name):g}"
    if not 0 < cfg.val_fraction < 1:
        return f"--val-fraction must be between 0 and 1 (exclusive), got {cfg.val_fraction:g}"
    if not cfg.lr > 0:
        return f"--lr must be positive, got {cfg.lr:g}"
    for name in ("widths", "bottleneck_rates"):
        try:
            values = ints(getattr(cfg, name))
        except ValueError:
            values = ()
        if not values or min(values) < 1:
            return f"--{name.replace('_', '-')} must be positive integers separated by commas, got {getattr(cfg, name)!r}"
    if cfg.encoder == "efficientnet_lite0" and len(ints(cfg.widths)) != 5:
        return f"--encoder efficientnet_lite0 has 5 levels: --widths must give 5 (the decoder's), got {cfg.widths!r}"
    stride = 2 ** len(ints(cfg.widths))
    if not 0 < cfg.input_size <= SIZE or cfg.input_size % stride:
        return (f"--input-size must be a multiple of {stride} (2 ** the {len(ints(cfg.widths))} levels of --widths) "
                f"up to {SIZE}, got {cfg.input_size}")
    return None


def given_options(parser: argparse.ArgumentParser, argv=None) -> set[str]:
    """The fields set on the command line (argparse fills in a default only where the namespace lacks one)."""
    unset = object()
    ns = parser.parse_args(argv, namespace=argparse.Namespace(**{f.name: unset for f in fields(Config)}))
    return {name for name, value in vars(ns).items() if value is not unset}


def continue_config(cfg: Config, given: set[str]) -> Config:
    """The run's ``model/config.json`` with the options in ``given`` on top; exits naming the option when one of
    ``LOCKED_ON_RESUME`` would change."""
    path = cfg.model_dir / "config.json"
    if not path.is_file():
        sys.exit(f"--resume / --calibrate-only: {path} not found (the run's settings; is --out the run folder?)")
    names = {f.name for f in fields(Config)}
    try:
        saved = {k: v for k, v in json.loads(path.read_text()).items() if k in names}
    except (OSError, ValueError, AttributeError) as err:
        sys.exit(f"--resume / --calibrate-only: {path}: cannot read the run's settings ({err})")
    merged = Config(**{**asdict(Config()), **saved})

    def same(name):
        a, b = getattr(cfg, name), getattr(merged, name)
        return ints(a) == ints(b) if name in ("widths", "bottleneck_rates") else a == b

    changed = [n for n in LOCKED_ON_RESUME if n in given and not same(n)]
    if changed:
        sys.exit(f"{path}: continuing a run keeps its " + ", ".join(
            f"--{n.replace('_', '-')} {getattr(merged, n)} (given: {getattr(cfg, n)})" for n in changed)
            + "; to change them, train a new run into another --out")
    for name in given | {"out", "resume", "calibrate_only"}:
        setattr(merged, name, getattr(cfg, name))
    return merged


def warn_if_earlier_run(run_dir: Path) -> None:
    """Training into a folder that holds another run replaces its files as the new run goes (config and split at
    once, the checkpoints epoch by epoch): say so (stderr)."""
    earlier = [f"model/{n}" for n in ("best.keras", "last.keras") if (run_dir / "model" / n).is_file()]
    if earlier:
        print(f"warning: {run_dir} holds an earlier run ({', '.join(earlier)}): this run replaces its files "
              "(--resume continues it instead)", file=sys.stderr)


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


# ------------------------------------------------------------------------------------------------ data
def load_split(cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """``(train, val, problems)``: the checked mask table split by image; a continued run must get the split
    it was trained with (its ``split.csv``)."""
    try:
        images_dir, csv_path = find_layout(cfg.data)
    except FileNotFoundError as err:  # the message names the folder and the layouts expected
        sys.exit(str(err))
    csv_path = Path(cfg.csv) if cfg.csv else csv_path
    if csv_path is None:
        sys.exit(f"{cfg.data}: no mask table found (masks.csv or train_ship_segmentations_v2.csv); give --csv")
    start = time.time()
    try:
        table = read_mask_table(csv_path, images_dir, check_images=cfg.check_images)
    except ValueError as err:  # unreadable CSV or wrong columns: the message names the file and the reason
        sys.exit(str(err))
    train, val = split_by_image(table.frame, cfg.val_fraction, cfg.seed)
    if train.empty or val.empty:
        sys.exit(f"{csv_path}: {len(train)} training / {len(val)} validation images: not enough usable images")
    print(f"data: {len(table.frame)} images ({int((table.frame.n_ships > 0).sum())} with ships) from {csv_path}; "
          f"train {len(train)}, val {len(val)}; {len(table.problems)} problem(s), their rows / images skipped"
          f"{' (all in ' + str(Path(cfg.out) / PROBLEMS_FILE) + ')' if table.problems else ''}; "
          f"read{' and checked' if cfg.check_images else ''} and split in {time.time() - start:.1f} s")
    saved = Path(cfg.out) / SPLIT_FILE
    if (cfg.resume or cfg.calibrate_only) and saved.is_file():
        before = pd.read_csv(saved, dtype=str, keep_default_na=False)
        now = split_table(train, val)
        if sorted(map(tuple, before.values)) != sorted(map(tuple, now.values)):
            sys.exit(f"{saved}: this run's train / validation split differs from the one computed now from "
                     f"{csv_path} (images added, removed or skipped since?); continue it on the same data")
    return train, val, table.problems


SPLIT_FILE = "split.csv"              # in --out: ImageId, subset (train / val)
PROBLEMS_FILE = "data_problems.txt"   # in --out: every CSV row / image left out, one per line


def split_table(train: pd.DataFrame, val: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"ImageId": list(train["ImageId"]) + list(val["ImageId"]),
                         "subset": ["train"] * len(train) + ["val"] * len(val)})


def write_split(run_dir: Path, train: pd.DataFrame, val: pd.DataFrame, problems: list[str]) -> None:
    """``split.csv`` (which image is in which subset; test.py --split) and ``data_problems.txt`` (all of them,
    not only the first ones printed)."""
    with atomic_write(run_dir / SPLIT_FILE, "w", newline="") as f:
        split_table(train, val).to_csv(f, index=False)
    if problems:
        with atomic_write(run_dir / PROBLEMS_FILE, "w") as f:
            f.write("\n".join(problems) + "\n")
    else:  # none this time: no stale list from an earlier run into the same folder
        (run_dir / PROBLEMS_FILE).unlink(missing_ok=True)


def make_datasets(cfg: Config, train: pd.DataFrame, val: pd.DataFrame, ctx: tf.distribute.InputContext,
                  epochs_done: int = 0) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """This input pipeline's training stream and fixed validation batches, per-replica batch size. The training
    stream starts after the ``epochs_done`` epochs of images this pipeline has already fed (``--resume``).

    The pipeline samples an endless stream from an in-memory table (no files to split), so TensorFlow's
    auto-sharding is switched off: with several workers, each one builds its own pipeline over its own
    round-robin share of the images (``ctx.input_pipeline_id`` of ``ctx.num_input_pipelines``) with its own
    seed, like a DistributedSampler. Nothing is read twice and no worker decodes images another one drops.
    """
    n, i = ctx.num_input_pipelines, ctx.input_pipeline_id
    train, val = train.iloc[i::n], val.iloc[i::n]
    if train.empty or val.empty:
        sys.exit(f"input pipeline {i} of {n}: no training or validation image left in its share")
    global_batch = cfg.batch_size * ctx.num_replicas_in_sync
    batch = ctx.get_per_replica_batch_size(global_batch)
    fed = epochs_done * cfg.steps_per_epoch * (global_batch // n)  # images this pipeline fed before --resume
    train_ds = make_dataset(train, batch, cfg.input_size, cfg.input_mode, cfg.empty_share,
                            cfg.ship_crop_prob, training=True, seed=cfg.seed + 1000 * i,
                            ship_sampling=cfg.ship_sampling, start=fed)
    # fixed validation batches (same images and crops every epoch), kept at the data's own empty share
    val_ds = make_dataset(val, batch, cfg.input_size, cfg.input_mode, None, cfg.ship_crop_prob, training=False,
                          seed=cfg.seed + 1 + 1000 * i, ship_sampling=cfg.ship_sampling).take(cfg.val_steps).cache()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return train_ds.with_options(options), val_ds.with_options(options)


def distributed_datasets(cfg: Config, strategy: tf.distribute.Strategy, train: pd.DataFrame, val: pd.DataFrame,
                         epochs_done: int = 0):
    """Training and validation datasets for ``model.fit`` under ``strategy`` (plain datasets for one device)."""
    if cfg.strategy == "default":
        return make_datasets(cfg, train, val, tf.distribute.InputContext(), epochs_done)
    return tuple(strategy.distribute_datasets_from_function(
        lambda ctx, k=k: make_datasets(cfg, train, val, ctx, epochs_done)[k]) for k in (0, 1))


# ------------------------------------------------------------------------------------------------ model
@keras.saving.register_keras_serializable(package="airbus_ships")
class EncoderScaledAdam(keras.optimizers.Adam):
    """Adam whose steps for the pretrained encoder's variables (layer names starting with ``prefix``) use
    ``encoder_lr_scale`` times the learning rate: the decoder learns at full speed while the ImageNet features
    are only adjusted. (Adam normalises gradients, so scaling the gradients would not do this.)"""

    def __init__(self, encoder_lr_scale: float = 1.0, prefix: str = LITE0_PREFIX, **kwargs):
        super().__init__(**kwargs)
        self.encoder_lr_scale, self.prefix = encoder_lr_scale, prefix

    def build(self, var_list):
        super().build(var_list)
        # update_step receives backend variables without names: remember the encoder's by their index
        self._encoder_indices = {self._get_variable_index(v) for v in var_list
                                 if any(part.startswith(self.prefix) for part in v.path.split("/"))}

    def update_step(self, gradient, variable, learning_rate):
        if self._get_variable_index(variable) in self._encoder_indices:
            learning_rate = ops.cast(learning_rate, variable.dtype) * self.encoder_lr_scale
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "encoder_lr_scale": self.encoder_lr_scale, "prefix": self.prefix}


def build_model(cfg: Config, replicas: int = 1) -> keras.Model:
    """The compiled U-Net; with several replicas its batch normalisation is synchronized (one set of statistics
    over the global batch, identical on every worker)."""
    model = build_unet(ints(cfg.widths), bottleneck_rates=ints(cfg.bottleneck_rates), sync_bn=replicas > 1,
                       encoder=cfg.encoder)
    optimizer = (EncoderScaledAdam(cfg.encoder_lr_scale, learning_rate=cfg.lr) if cfg.encoder != "scratch"
                 else keras.optimizers.Adam(cfg.lr))
    loss = (SmallShipBceDiceLoss(cfg.small_ship_weight, border_weight=cfg.border_weight,
                                 border_width=cfg.border_width, lovasz_weight=cfg.lovasz_weight)
            if cfg.small_ship_weight or cfg.border_weight or cfg.lovasz_weight else bce_dice_loss)
    model.compile(optimizer=optimizer, loss=loss, metrics=[dice_coef, iou_coef])
    return model


STATE_FILE = "train_state.json"  # in model/, next to last.keras


def saved_state(cfg: Config) -> dict:
    """The training state of the run in ``--out`` (the chief's): ``epochs_done`` and the early-stopping /
    plateau counters (``train_state.json``); runs from before that file existed fall back to the log: epochs done
    and the best validation loss. Exits with the reason when ``last.keras`` or a readable state is missing."""
    last, log, path = cfg.model_dir / "last.keras", Path(cfg.out) / "train_log.csv", cfg.model_dir / STATE_FILE
    if not last.exists():
        sys.exit(f"--resume: {last} not found")
    if path.exists():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as err:
            sys.exit(f"--resume: {path}: cannot read the training state ({err})")
    history = pd.read_csv(log) if log.exists() else pd.DataFrame()
    best = float(history["val_loss"].min()) if "val_loss" in history else None
    return {"epochs_done": int(history["epoch"].max()) + 1 if len(history) else 0,
            "early_stopping": {"best": best}, "reduce_lr": {"best": best}}


def check_resume(cfg: Config) -> dict:
    """Before any data is read: ``--resume`` needs epochs left to train, ``--calibrate-only`` the best model.
    Returns the training state to continue from (:func:`saved_state`; ``{"epochs_done": 0}`` for a new run)."""
    if cfg.calibrate_only:
        best = cfg.model_dir / "best.keras"
        if not best.is_file():
            sys.exit(f"--calibrate-only: {best} not found (the run's best checkpoint; is --out the run folder?)")
    elif cfg.resume:
        state = saved_state(cfg)
        done = state["epochs_done"]
        if done >= cfg.epochs:
            sys.exit(f"--resume: {cfg.out}: {done} epochs done, --epochs {cfg.epochs}: nothing left to train "
                     f"(--epochs counts from the run's start: give more; --calibrate-only chooses the ship rule again)")
        return state
    return {"epochs_done": 0}


def resumed_model(cfg: Config, state: dict) -> keras.Model:
    """The model with its optimizer state from the run folder (``--out``, the chief's), ``state`` its saved training
    state (:func:`saved_state`)."""
    last = cfg.model_dir / "last.keras"
    model = keras.saving.load_model(last, custom_objects=CUSTOM_OBJECTS)
    lr = float(ops.convert_to_numpy(model.optimizer.learning_rate))
    print(f"resuming from {last}: {state['epochs_done']} epochs done, learning rate {lr:g}, "
          f"early stopping {state['early_stopping']}")
    return model


def make_callbacks(cfg: Config, run_dir: Path, state: dict, strategy: tf.distribute.Strategy, chief: bool,
                   run_start: float, reserve: float) -> list[keras.callbacks.Callback]:
    """The fit's callbacks, in the order they run at the end of an epoch: the ones that decide (early stopping,
    a learning-rate cut) before the ones that save, so that last.keras and train_state.json hold the state
    after that epoch's decisions (a cut in the last epoch before a stop survives --resume)."""
    model_dir = run_dir / "model"
    early = ResumableEarlyStopping(state.get("early_stopping"), monitor="val_loss", patience=cfg.patience)
    plateau = ResumableReduceLROnPlateau(state.get("reduce_lr"), monitor="val_loss", factor=0.5, patience=3,
                                         min_lr=1e-5)
    return [
        early,
        plateau,
        AtomicModelCheckpoint(str(model_dir / "best.keras"), monitor="val_loss", save_best_only=True,
                              initial_value_threshold=state.get("early_stopping", {}).get("best")),
        AtomicModelCheckpoint(str(model_dir / "last.keras")),
        ResumableCSVLogger(str(run_dir / "train_log.csv"), append=cfg.resume and chief),
        TimeBudget(cfg.time_budget_min, strategy, run_start, reserve),
        SaveTrainState(model_dir / STATE_FILE, early, plateau),
    ]


# ------------------------------------------------------------------------------------------------ after fit
def calibration_image(path: str) -> tuple[np.ndarray | None, str | None]:
    """``(image, None)`` for a readable 768x768 image, else ``(None, "<path>: why")``."""
    try:
        image = read_rgb(path)
    except ImageReadError as err:
        return None, str(err)
    if image.shape[:2] != (SIZE, SIZE):
        return None, f"{path}: image is {image.shape[1]}x{image.shape[0]}, not {SIZE}x{SIZE}"
    return image, None


def rule_seconds(cfg: Config, model: keras.Model, calib: tuple[pd.DataFrame, pd.DataFrame]) -> float:
    """Estimated seconds of :func:`choose_ship_rule`: one image's prediction (timed on the second call: the
    first traces the graph) x the number of calibration images, +10% and 15 s for loading and the plot. The
    first readable calibration image is timed (choose_ship_rule reports the others)."""
    for path in pd.concat(calib)["path"]:
        image, _ = calibration_image(path)
        if image is not None:
            break
    else:
        return 15.0  # no readable image: choose_ship_rule will stop with the reasons
    predict_probs(model, image, cfg.predict_how, cfg.input_mode, cfg.input_size)
    start = time.time()
    predict_probs(model, image, cfg.predict_how, cfg.input_mode, cfg.input_size)
    return (time.time() - start) * sum(map(len, calib)) * 1.1 + 15


def choose_ship_rule(cfg: Config, model: keras.Model, calib: tuple[pd.DataFrame, pd.DataFrame],
                     model_dir: Path) -> ShipRule:
    """Pick threshold / minimum ship size / minimum confidence maximising the Kaggle score on ``calib``:
    ``(validation rows, training rows)`` from :func:`airbus_ships.inference.calibration_rows`. An image that
    cannot be read or is not 768x768 is reported by name and left out (recorded in postprocess.json)."""
    val_rows, train_rows = calib
    probs, truths, skipped, used = [], [], [], {"val": 0, "train": 0}
    for part, rows in (("val", val_rows), ("train", train_rows)):
        for row in rows.itertuples():
            image, why = calibration_image(row.path)
            if image is None:
                print(f"warning: ship rule: {why}; image skipped", file=sys.stderr)
                skipped.append(why)
                continue
            probs.append(predict_probs(model, image, cfg.predict_how, cfg.input_mode, cfg.input_size))
            truths.append(ship_instances(row.rle))
            used[part] += 1
    if not probs:
        sys.exit(f"ship rule: none of the {len(skipped)} calibration images is usable (reasons above); "
                 f"{model_dir / 'postprocess.json'} not written")
    rule, score = calibrate_rule(probs, truths)
    rule.save(model_dir, {"kaggle_score_on_calib": score, "n_images": len(probs), "n_val_images": used["val"],
                          "n_train_images": used["train"], "how": cfg.predict_how, "skipped_images": skipped})
    print(f"ship rule on {used['val']} validation + {used['train']} training images: {rule} -> "
          f"Kaggle score {score:.3f}" + (f"; {len(skipped)} image(s) skipped" if skipped else ""))
    return rule


def plot_curves(log_csv: Path, out_png: Path) -> None:
    """Loss, dice and IoU per epoch (train and validation)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from common.io import save_figure

    log = pd.read_csv(log_csv)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key in zip(axes, ("loss", "dice_coef", "iou_coef")):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + key in log:
                ax.plot(log["epoch"] + 1, log[prefix + key], style, label=(prefix or "train_") + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    save_figure(fig, out_png, dpi=100)


def main(argv=None) -> None:
    run_start = time.time()
    cfg = parse_args(argv)
    setup_device(cfg.device, cfg.threads)
    strategy = make_strategy(cfg.strategy)
    chief, task_id = worker_role(strategy)
    keras.utils.set_random_seed(cfg.seed)
    # the chief writes into --out; other workers write their (identical) copies into a temporary folder
    run_dir = Path(cfg.out) if chief else Path(tempfile.mkdtemp(prefix=f"airbus_worker{task_id}_"))
    model_dir = run_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    state = check_resume(cfg)
    if chief and not (cfg.resume or cfg.calibrate_only):
        warn_if_earlier_run(run_dir)

    train, val, problems = load_split(cfg)
    if chief:  # also with --calibrate-only: a run from before split.csv existed gets its (recomputed) split
        write_split(run_dir, train, val, problems)
    # the images the ship rule is chosen on after the fit: validation first, topped up with training images
    calib = calibration_rows(val, train, cfg.calib_images, cfg.seed, cfg.calib_val_only)
    if cfg.calibrate_only:  # cfg is the run's config.json (continue_config)
        best_model = keras.saving.load_model(cfg.model_dir / "best.keras", custom_objects=CUSTOM_OBJECTS)
        choose_ship_rule(cfg, best_model, calib, cfg.model_dir)
        return
    train_ds, val_ds = distributed_datasets(cfg, strategy, train, val, state["epochs_done"])

    with strategy.scope():  # variables (model, optimizer, metrics) are mirrored on every replica
        model = resumed_model(cfg, state) if cfg.resume else build_model(cfg, strategy.num_replicas_in_sync)
    write_json(model_dir / "config.json", {**asdict(cfg), "params": model.count_params(),
                                           "replicas": strategy.num_replicas_in_sync})
    print(f"model: U-Net, {cfg.encoder} encoder, widths {cfg.widths}, {model.count_params():,} parameters; "
          f"input {cfg.input_mode} "
          f"{cfg.input_size}x{cfg.input_size}; strategy {cfg.strategy}: {strategy.num_replicas_in_sync} "
          f"replica(s), global batch {cfg.batch_size * strategy.num_replicas_in_sync}"
          + ("" if chief else f"; worker {task_id} writes to {run_dir} (deleted at the end)"))

    reserve = rule_seconds(cfg, model, calib) if cfg.time_budget_min and chief else 0.0
    if reserve:
        print(f"time budget {cfg.time_budget_min:g} min for the whole run, of which ~{reserve / 60:.1f} min kept "
              f"for choosing the ship rule on {sum(map(len, calib))} images")
    log_csv = run_dir / "train_log.csv"
    callbacks = make_callbacks(cfg, run_dir, state, strategy, chief, run_start, reserve)
    if cfg.strategy != "default":
        fix_distributed_fit(model, strategy)
    start = time.time()
    model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, initial_epoch=state["epochs_done"],
              steps_per_epoch=cfg.steps_per_epoch, validation_steps=cfg.val_steps, callbacks=callbacks,
              verbose=2)
    train_minutes = (time.time() - start) / 60
    print(f"weights sha256 {weights_digest(model)}")
    if not chief:
        shutil.rmtree(run_dir, ignore_errors=True)
        print(f"worker {task_id} done in {train_minutes:.1f} min")
        return

    plot_curves(log_csv, run_dir / "training_curves.png")
    if not (model_dir / "best.keras").is_file():  # ModelCheckpoint saves no epoch whose validation loss is NaN
        sys.exit(f"{model_dir / 'best.keras'}: not written: no epoch had a finite validation loss ({log_csv})")
    best_model = keras.saving.load_model(model_dir / "best.keras", custom_objects=CUSTOM_OBJECTS)
    rule_start = time.time()
    choose_ship_rule(cfg, best_model, calib, model_dir)
    log = pd.read_csv(log_csv)
    end = time.time()
    run_minutes = (end - run_start) / 60
    write_json(run_dir / "train_summary.json",
               {"train_minutes": train_minutes, "epochs_logged": len(log),
                "rule_minutes": (end - rule_start) / 60, "rule_minutes_reserved": reserve / 60,
                "run_minutes": run_minutes, "best_val_loss": float(log["val_loss"].min()),
                "strategy": cfg.strategy, "replicas": strategy.num_replicas_in_sync})
    print(f"done in {run_minutes:.1f} min (fit {train_minutes:.1f}): {model_dir / 'best.keras'}, "
          f"{log_csv}, {run_dir / 'training_curves.png'}")


if __name__ == "__main__":
    main()
