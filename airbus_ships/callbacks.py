"""Keras callbacks of train.py's fit: atomic checkpoints, the time budget, and early stopping / learning-rate
plateau / CSV log that continue where a run stopped (``--resume``), with the state file that makes that possible
(:func:`make_callbacks` puts them in order, :func:`saved_state` reads the state back)."""
from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf
from keras import ops

from airbus_ships.runtime import vote_to_stop
from common.io import write_json

STATE_FILE = "train_state.json"  # in model/, next to last.keras


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint that writes to a temporary file and renames it: a crash never leaves half a checkpoint."""

    def _save_model(self, epoch, batch, logs):
        final, tmp = self.filepath, self.filepath + ".tmp.keras"
        # a temporary file left by a run killed while saving must not be renamed onto the checkpoint after an
        # epoch that saves nothing (save_best_only without improvement): only this call's file is
        Path(tmp).unlink(missing_ok=True)
        self.filepath = tmp
        try:
            super()._save_model(epoch, batch, logs)
        finally:
            self.filepath = final
        if os.path.exists(tmp):
            os.replace(tmp, final)


class TimeBudget(keras.callbacks.Callback):
    """Stop before an epoch that would end less than ``reserve_s`` seconds before ``minutes`` after ``start``
    (the run's start; the reserve is the time the ship-rule choice after the fit will take)."""

    def __init__(self, minutes: float, strategy: tf.distribute.Strategy, start: float | None = None,
                 reserve_s: float = 0.0):
        super().__init__()
        self.seconds, self.reserve, self.vote = minutes * 60, reserve_s, vote_to_stop(strategy)
        self.start, self.last = start or time.time(), time.time()

    def on_epoch_end(self, epoch, logs=None):
        now = time.time()
        epoch_time, self.last = now - self.last, now
        over = bool(self.seconds) and now - self.start + epoch_time + self.reserve > self.seconds
        if self.seconds and self.vote(over):  # workers' clocks differ: stop together
            print(f"\ntime budget: stopping after epoch {epoch + 1} ({(now - self.start) / 60:.1f} min)")
            self.model.stop_training = True


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping that starts from a saved patience counter and best value (``--resume``)."""

    def __init__(self, state: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.initial_state = state or {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.wait, self.best = self.initial_state.get("wait", 0), self.initial_state.get("best")


class ResumableReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau that starts from saved counters and best value (``--resume``; the learning rate itself
    is in the optimizer state of last.keras)."""

    def __init__(self, state: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.initial_state = state or {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for key in ("wait", "best", "cooldown_counter"):
            if key in self.initial_state:
                setattr(self, key, self.initial_state[key])


class ResumableCSVLogger(keras.callbacks.CSVLogger):
    """CSVLogger that, appending to a log, keeps that log's columns (a resumed run's rows line up with the
    header even when its logs hold other keys)."""

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.append and os.path.exists(self.filename) and os.path.getsize(self.filename):
            with open(self.filename, newline="") as f:
                header = next(csv.reader(f, delimiter=self.sep), [])
            self.keys = [k for k in header if k != "epoch"] or None


class SaveTrainState(keras.callbacks.Callback):
    """After every epoch (and after last.keras), write ``train_state.json``: epochs done, the counters of
    early stopping and learning-rate reduction and the learning rate, so ``--resume`` continues exactly where
    the run stopped."""

    def __init__(self, path: Path, early: ResumableEarlyStopping, plateau: ResumableReduceLROnPlateau):
        super().__init__()
        self.path, self.early, self.plateau = path, early, plateau

    def on_epoch_end(self, epoch, logs=None):
        def num(v):
            return None if v is None else float(v)
        write_json(self.path, {
            "epochs_done": epoch + 1,
            "early_stopping": {"wait": int(self.early.wait), "best": num(self.early.best)},
            "reduce_lr": {"wait": int(self.plateau.wait), "best": num(self.plateau.best),
                          "cooldown_counter": int(self.plateau.cooldown_counter)},
            "learning_rate": float(ops.convert_to_numpy(self.model.optimizer.learning_rate)),
            "stop_training": bool(self.model.stop_training),
        })


def saved_state(model_dir: Path, log_csv: Path) -> dict:
    """The training state of the run whose checkpoints are in ``model_dir``: ``epochs_done`` and the
    early-stopping / plateau counters (``train_state.json``); runs from before that file existed fall back to
    the log: epochs done and the best validation loss. Exits with the reason when ``last.keras`` or a readable
    state is missing."""
    last, path = model_dir / "last.keras", model_dir / STATE_FILE
    if not last.exists():
        sys.exit(f"--resume: {last} not found")
    if path.exists():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as err:
            sys.exit(f"--resume: {path}: cannot read the training state ({err})")
    history = pd.read_csv(log_csv) if log_csv.exists() else pd.DataFrame()
    best = float(history["val_loss"].min()) if "val_loss" in history else None
    return {"epochs_done": int(history["epoch"].max()) + 1 if len(history) else 0,
            "early_stopping": {"best": best}, "reduce_lr": {"best": best}}


def make_callbacks(cfg, run_dir: Path, state: dict, strategy: tf.distribute.Strategy, chief: bool,
                   run_start: float, reserve: float) -> list[keras.callbacks.Callback]:
    """The fit's callbacks for the settings ``cfg`` (train.py's Config), in the order they run at the end of an
    epoch: the ones that decide (early stopping, a learning-rate cut) before the ones that save, so that
    last.keras and train_state.json hold the state after that epoch's decisions (a cut in the last epoch before
    a stop survives --resume)."""
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
