"""Train the ship U-Net on Kaggle Airbus data.

    python airbus_ships/train.py --data data/airbus --out runs/airbus          # demo data
    python airbus_ships/train.py --data /path/to/airbus-ship-detection         # Kaggle: train_v2/ + CSV
    python airbus_ships/train.py --out runs/airbus --resume                    # continue a run

Reads top to bottom: config -> data (mask table, split by image, streaming tf.data pipeline) -> model
(U-Net, BCE + dice, Adam) -> fit (checkpoints, CSV log, early stopping, time budget) -> choose the
ship / no-ship rule on the validation images -> training-curve plot.

Outputs in ``--out``: ``model/best.keras`` (lowest validation loss), ``model/last.keras`` (for --resume),
``model/config.json`` (this run's settings), ``model/postprocess.json`` (the ship rule test.py applies),
``train_log.csv`` and ``training_curves.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the logs

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

from airbus_ships.data import find_layout, make_dataset, read_mask_table, ship_instances, split_by_image  # noqa: E402
from airbus_ships.inference import ShipRule, calibrate_rule, predict_probs  # noqa: E402
from airbus_ships.losses import CUSTOM_OBJECTS, bce_dice_loss, dice_coef, iou_coef  # noqa: E402
from airbus_ships.model import build_unet  # noqa: E402
from common.io import read_rgb, write_json  # noqa: E402


@dataclass
class Config:
    data: str = "data/airbus"       # Kaggle-layout folder: images/ + masks.csv, or train_v2/ + train_ship_segmentations_v2.csv
    csv: str = ""                   # mask table to use instead of the one in --data (e.g. a split's rows)
    out: str = "runs/airbus"        # run folder: model/, train_log.csv, training_curves.png
    seed: int = 0                   # split, sampling, augmentation and weight initialisation
    device: str = "auto"            # auto | cpu | cuda
    val_fraction: float = 0.15      # share of images (stratified ship / no ship) held out for validation
    input_mode: str = "crop"        # crop: full-resolution 256 crops | resize: whole image downscaled (see README)
    input_size: int = 256           # network input side during training
    empty_share: float = 0.25       # share of sampled training images without ships (Kaggle: 78%)
    ship_crop_prob: float = 0.8     # share of ship-image crops centred on a ship (else anywhere)
    widths: str = "8,16,32,64,128"  # encoder filters per level; the count is the depth (input sides: multiples of 2**depth)
    bottleneck_rates: str = "1,2,4"  # dilation rates of the multi-level bottleneck branches
    batch_size: int = 8
    lr: float = 1e-3                # Adam learning rate (halved when the validation loss stalls)
    epochs: int = 40                # upper bound; early stopping and the time budget usually end sooner
    steps_per_epoch: int = 40       # batches per epoch (the stream is endless; an epoch is a reporting unit)
    val_steps: int = 12             # validation batches per epoch (the same cached batches every epoch)
    patience: int = 8               # early stopping patience (epochs without a lower validation loss)
    time_budget_min: float = 24.0   # stop starting new epochs after this many minutes (0: no limit)
    calib_images: int = 200         # validation images used to choose the ship / no-ship rule
    predict_how: str = "tile"       # how the rule's probabilities are predicted: tile (256x256, as test.py) | full
    resume: bool = False            # continue from out/model/last.keras and train_log.csv
    calibrate_only: bool = False    # no training: re-choose the ship rule for out/model/best.keras

    @property
    def model_dir(self) -> Path:
        return Path(self.out) / "model"


def parse_args(argv=None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in fields(Config):
        if f.type in ("bool", bool):
            p.add_argument(f"--{f.name.replace('_', '-')}", action="store_true", help=f.name)
        else:
            typ = {"int": int, "float": float, "str": str}[str(f.type)]
            p.add_argument(f"--{f.name.replace('_', '-')}", type=typ, default=f.default, help=f.name)
    return Config(**vars(p.parse_args(argv)))


def setup_device(device: str) -> None:
    """Pin TensorFlow to the CPU, or require a GPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if device == "cpu":
        tf.config.set_visible_devices([], "GPU")
    elif device == "cuda" and not gpus:
        sys.exit("--device cuda: TensorFlow sees no GPU")
    elif device not in ("auto", "cpu", "cuda"):
        sys.exit(f"--device must be auto, cpu or cuda, got {device!r}")


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


# ------------------------------------------------------------------------------------------------ data
def load_split(cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    images_dir, csv_path = find_layout(cfg.data)
    csv_path = Path(cfg.csv) if cfg.csv else csv_path
    if csv_path is None:
        sys.exit(f"{cfg.data}: no mask table found (masks.csv or train_ship_segmentations_v2.csv); give --csv")
    table = read_mask_table(csv_path, images_dir)
    train, val = split_by_image(table.frame, cfg.val_fraction, cfg.seed)
    if train.empty or val.empty:
        sys.exit(f"{csv_path}: {len(train)} training / {len(val)} validation images: not enough usable images")
    print(f"data: {len(table.frame)} images ({int((table.frame.n_ships > 0).sum())} with ships) from {csv_path}; "
          f"train {len(train)}, val {len(val)}; {len(table.problems)} problem rows skipped")
    return train, val


# ------------------------------------------------------------------------------------------------ model
def build_model(cfg: Config) -> keras.Model:
    model = build_unet(ints(cfg.widths), bottleneck_rates=ints(cfg.bottleneck_rates))
    model.compile(optimizer=keras.optimizers.Adam(cfg.lr), loss=bce_dice_loss, metrics=[dice_coef, iou_coef])
    return model


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint that writes to a temporary file and renames it: a crash never leaves half a checkpoint."""

    def _save_model(self, epoch, batch, logs):
        final, tmp = self.filepath, self.filepath + ".tmp.keras"
        self.filepath = tmp
        try:
            super()._save_model(epoch, batch, logs)
        finally:
            self.filepath = final
        if os.path.exists(tmp):
            os.replace(tmp, final)


class TimeBudget(keras.callbacks.Callback):
    """Stop before an epoch that would end after ``minutes`` of training."""

    def __init__(self, minutes: float):
        super().__init__()
        self.seconds, self.start, self.last = minutes * 60, time.time(), time.time()

    def on_epoch_end(self, epoch, logs=None):
        now = time.time()
        epoch_time, self.last = now - self.last, now
        if self.seconds and now - self.start + epoch_time > self.seconds:
            print(f"\ntime budget: stopping after epoch {epoch + 1} ({(now - self.start) / 60:.1f} min)")
            self.model.stop_training = True


def resume_state(cfg: Config) -> tuple[keras.Model, int, float | None]:
    """(model with optimizer state, epochs done, best validation loss so far) from the run folder."""
    last, log = cfg.model_dir / "last.keras", Path(cfg.out) / "train_log.csv"
    if not last.exists():
        sys.exit(f"--resume: {last} not found")
    model = keras.saving.load_model(last, custom_objects=CUSTOM_OBJECTS)
    history = pd.read_csv(log) if log.exists() else pd.DataFrame()
    done = int(history["epoch"].max()) + 1 if len(history) else 0
    best = float(history["val_loss"].min()) if "val_loss" in history else None
    print(f"resuming from {last}: {done} epochs done, best val_loss {best}")
    return model, done, best


# ------------------------------------------------------------------------------------------------ after fit
def choose_ship_rule(cfg: Config, model: keras.Model, val: pd.DataFrame) -> ShipRule:
    """Pick threshold / minimum ship size / minimum confidence maximising the Kaggle score on validation images."""
    sample = val.sample(min(len(val), cfg.calib_images), random_state=cfg.seed)
    probs, truths = [], []
    for row in sample.itertuples():
        probs.append(predict_probs(model, read_rgb(row.path), cfg.predict_how, cfg.input_mode, cfg.input_size))
        truths.append(ship_instances(row.rle))
    rule, score = calibrate_rule(probs, truths)
    rule.save(cfg.model_dir, {"kaggle_score_on_val": score, "n_images": len(sample), "how": cfg.predict_how})
    print(f"ship rule on {len(sample)} validation images: {rule} -> Kaggle score {score:.3f}")
    return rule


def plot_curves(log_csv: Path, out_png: Path) -> None:
    """Loss, dice and IoU per epoch (train and validation)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from common.io import atomic_path

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
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    cfg = parse_args(argv)
    setup_device(cfg.device)
    keras.utils.set_random_seed(cfg.seed)
    cfg.model_dir.mkdir(parents=True, exist_ok=True)

    train, val = load_split(cfg)
    if cfg.calibrate_only:
        saved = json.loads((cfg.model_dir / "config.json").read_text())
        cfg.input_mode, cfg.input_size = saved["input_mode"], saved["input_size"]
        best_model = keras.saving.load_model(cfg.model_dir / "best.keras", custom_objects=CUSTOM_OBJECTS)
        choose_ship_rule(cfg, best_model, val)
        return
    train_ds = make_dataset(train, cfg.batch_size, cfg.input_size, cfg.input_mode, cfg.empty_share,
                            cfg.ship_crop_prob, training=True, seed=cfg.seed)
    # fixed validation batches (same images and crops every epoch), kept at the data's own empty share
    val_ds = make_dataset(val, cfg.batch_size, cfg.input_size, cfg.input_mode, None, cfg.ship_crop_prob,
                          training=False, seed=cfg.seed + 1).take(cfg.val_steps).cache()

    if cfg.resume:
        model, initial_epoch, best = resume_state(cfg)
    else:
        model, initial_epoch, best = build_model(cfg), 0, None
    write_json(cfg.model_dir / "config.json", {**asdict(cfg), "params": model.count_params()})
    print(f"model: U-Net widths {cfg.widths}, {model.count_params():,} parameters; input {cfg.input_mode} "
          f"{cfg.input_size}x{cfg.input_size}")

    log_csv = Path(cfg.out) / "train_log.csv"
    callbacks = [
        AtomicModelCheckpoint(str(cfg.model_dir / "best.keras"), monitor="val_loss", save_best_only=True,
                              initial_value_threshold=best),
        AtomicModelCheckpoint(str(cfg.model_dir / "last.keras")),
        keras.callbacks.CSVLogger(str(log_csv), append=cfg.resume),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=3, min_lr=1e-5),
        TimeBudget(cfg.time_budget_min),
    ]
    start = time.time()
    model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, initial_epoch=initial_epoch,
              steps_per_epoch=cfg.steps_per_epoch, validation_steps=cfg.val_steps, callbacks=callbacks,
              verbose=2)
    train_minutes = (time.time() - start) / 60

    best_model = keras.saving.load_model(cfg.model_dir / "best.keras", custom_objects=CUSTOM_OBJECTS)
    choose_ship_rule(cfg, best_model, val)
    plot_curves(log_csv, Path(cfg.out) / "training_curves.png")
    write_json(Path(cfg.out) / "train_summary.json",
               {"train_minutes": train_minutes, "epochs_logged": len(pd.read_csv(log_csv)),
                "best_val_loss": float(pd.read_csv(log_csv)["val_loss"].min())})
    print(f"done in {train_minutes:.1f} min: {cfg.model_dir / 'best.keras'}, {log_csv}, "
          f"{Path(cfg.out) / 'training_curves.png'}")


if __name__ == "__main__":
    main()
