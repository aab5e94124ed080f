"""Keras callbacks of train.py's fit: atomic checkpoints, the time budget, progress inside an epoch, and early
stopping / learning-rate plateau / CSV log that continue where a run stopped (``--resume``), with the state file
that makes that possible (:func:`make_callbacks` puts them in order, :func:`saved_state` reads the state back).

What ``--resume`` guarantees: the run continues from the end of its last completed epoch, and ends with the
weights of a run that was never stopped, whenever it was stopped (Ctrl-C, kill -9, a crash), the middle of an
epoch and the saving of its checkpoints included. An epoch is committed when ``train_state.json`` names the
checksum of its ``last.keras`` (:class:`SaveLastAndState`); an epoch cut short is trained again, from the same
batches.
"""
from __future__ import annotations

import csv
import hashlib
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
from common.io import atomic_write, write_json

STATE_FILE = "train_state.json"  # in model/, next to last.keras
PACE_STEPS = 5  # StepProgress tells the expected training time after this many steps (the first builds the graph)
LAST_FILE = "last.keras"


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
        self.stopped_after = None  # the epoch after which the budget stopped the training, if it did

    def on_epoch_end(self, epoch, logs=None):
        now = time.time()
        epoch_time, self.last = now - self.last, now
        over = bool(self.seconds) and now - self.start + epoch_time + self.reserve > self.seconds
        if self.seconds and self.vote(over):  # workers' clocks differ: stop together
            epochs = self.params.get("epochs") if self.params else None
            if epochs is None or epoch + 1 < epochs:
                self.stopped_after = epoch + 1
                print(f"warning: the time budget (--time-budget-min {self.seconds / 60:g}, the ship rule's "
                      f"~{self.reserve / 60:.1f} min kept) stops the training after epoch {epoch + 1}"
                      + (f" of {epochs}" if epochs else "") + f", {(now - self.start) / 60:.1f} min into the run "
                      "(--time-budget-min 0: no limit; --resume --epochs N continues it)", file=sys.stderr)
            self.model.stop_training = True


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


class StepProgress(keras.callbacks.Callback):
    """Progress inside an epoch (Keras prints one line at its end): a tqdm bar on a terminal; in a log or a pipe
    a line every ``every`` seconds (the step, seconds a step, the epoch's time left). The pace, measured after
    the first step (which also builds the graph): after ``pace_steps`` steps, what the training steps of the
    epochs left take; after the first epoch, with validation and checkpoints; and when the time budget will end
    the training sooner. Runs last at the end of an epoch (after the checkpoints).

    ``initial_epoch``: the epochs already done (``--resume``); ``budget_s``, ``run_start``, ``reserve_s``: as
    :class:`TimeBudget` (0: no budget)."""

    def __init__(self, initial_epoch: int = 0, budget_s: float = 0.0, run_start: float | None = None,
                 reserve_s: float = 0.0, every: float = 30.0, pace_steps: int = PACE_STEPS):
        super().__init__()
        self.initial_epoch, self.budget_s, self.reserve_s = initial_epoch, budget_s, reserve_s
        self.run_start, self.every, self.pace_steps = run_start or time.time(), every, pace_steps
        self.tty = sys.stdout.isatty()
        self.bar, self.steps_run, self.first_step_end, self.pace_told = None, 0, None, False

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.epoch_first_step_end, self.last_line = epoch, None, time.time()
        if self.tty:
            from tqdm import tqdm
            self.bar = tqdm(total=self.params.get("steps"), desc=f"epoch {epoch + 1}", unit="step", leave=False,
                            file=sys.stdout)

    def per_step(self) -> float | None:
        """Seconds a training step, over the steps since the run's first (None before its second step)."""
        return (self.last_step_end - self.first_step_end) / (self.steps_run - 1) if self.steps_run > 1 else None

    def on_train_batch_end(self, batch, logs=None):
        now, steps = time.time(), self.params.get("steps") or 0
        self.steps_run, self.last_step_end = self.steps_run + 1, now
        self.first_step_end = self.first_step_end or now
        self.epoch_first_step_end = self.epoch_first_step_end or now
        if not self.pace_told and self.steps_run > self.pace_steps:
            self.pace_told = True
            fit_s = self.per_step() * steps * self.epochs_left()
            print(f"pace: {self.per_step():.2f} s a training step: the {self.epochs_left()} epochs x {steps} steps "
                  f"take ~{_duration(fit_s)} of training steps" + self.budget_note(fit_s, now), flush=True)
        loss = (logs or {}).get("loss")
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None:
                self.bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
        elif now - self.last_line >= self.every and 0 < batch < steps - 1:
            per_step = (now - self.epoch_first_step_end) / batch
            print(f"  epoch {self.epoch + 1}: step {batch + 1}/{steps}, {per_step:.2f} s a step, ~"
                  f"{_duration(per_step * (steps - batch - 1))} left in this epoch"
                  + (f", loss {float(loss):.4f}" if loss is not None else ""), flush=True)
            self.last_line = now

    def epochs_left(self) -> int:
        return (self.params.get("epochs") or 0) - max(self.initial_epoch, getattr(self, "epoch", 0))

    def budget_note(self, seconds: float, now: float, epoch_s: float | None = None) -> str:
        """``"; the time budget ... ends the training after ~N epochs"`` when ``seconds`` more would exceed it."""
        left = self.budget_s - (now - self.run_start) - self.reserve_s
        if not self.budget_s or seconds <= left:
            return ""
        epoch_s = epoch_s or seconds / max(self.epochs_left(), 1)
        return (f"; the time budget ({self.budget_s / 60:g} min for the whole run) ends the training in "
                f"~{_duration(max(left, 0))}, after ~{max(int(left // epoch_s), 0)} more epochs")

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if (epoch == self.initial_epoch and self.per_step() and epoch + 1 < (self.params.get("epochs") or 0)
                and not self.model.stop_training):
            now, steps = time.time(), self.params.get("steps") or 0
            epoch_s = self.per_step() * steps + (now - self.last_step_end)  # + validation and checkpoints
            self.epoch = epoch + 1
            rest = epoch_s * self.epochs_left()
            print(f"pace: an epoch takes ~{_duration(epoch_s)} with validation and checkpoints: the "
                  f"{self.epochs_left()} epochs left take ~{_duration(rest)}" + self.budget_note(rest, now, epoch_s),
                  flush=True)


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
    header even when its logs hold other keys) and only its rows of the ``epochs_done`` committed epochs (a row
    logged by an epoch whose checkpoint a kill cut short is logged again when that epoch is trained again)."""

    def __init__(self, filename: str, append: bool = False, epochs_done: int = 0):
        super().__init__(filename, append=append)
        self.epochs_done = epochs_done

    def on_train_begin(self, logs=None):
        if self.append and os.path.exists(self.filename) and os.path.getsize(self.filename):
            with open(self.filename, newline="") as f:
                rows = list(csv.reader(f, delimiter=self.sep))
            kept = [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) < self.epochs_done]
            if len(kept) < len(rows) - 1:
                with atomic_write(self.filename, "w", newline="") as f:
                    csv.writer(f, delimiter=self.sep).writerows([rows[0], *kept])
            super().on_train_begin(logs)
            self.keys = [k for k in rows[0] if k != "epoch"] or None
        else:
            super().on_train_begin(logs)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class SaveLastAndState(keras.callbacks.Callback):
    """After every epoch: ``last.keras`` (the model with its optimizer state) and ``train_state.json`` (epochs
    done, the counters of early stopping and learning-rate reduction, the learning rate), committed together so
    that ``--resume`` continues exactly where the run stopped, whenever it was killed: the model goes to a
    temporary file, then the state naming that file's checksum is written (the commit), then the file is renamed
    onto ``last.keras``; :func:`saved_state` finishes a rename a kill interrupted."""

    def __init__(self, model_dir: Path, early: ResumableEarlyStopping, plateau: ResumableReduceLROnPlateau):
        super().__init__()
        self.model_dir, self.early, self.plateau = Path(model_dir), early, plateau

    def on_epoch_end(self, epoch, logs=None):
        def num(v):
            return None if v is None else float(v)
        last, tmp = self.model_dir / LAST_FILE, self.model_dir / (LAST_FILE + ".tmp.keras")
        tmp.unlink(missing_ok=True)
        self.model.save(tmp)
        write_json(self.model_dir / STATE_FILE, {
            "epochs_done": epoch + 1,
            "early_stopping": {"wait": int(self.early.wait), "best": num(self.early.best)},
            "reduce_lr": {"wait": int(self.plateau.wait), "best": num(self.plateau.best),
                          "cooldown_counter": int(self.plateau.cooldown_counter)},
            "learning_rate": float(ops.convert_to_numpy(self.model.optimizer.learning_rate)),
            "stop_training": bool(self.model.stop_training),
            "checkpoint_sha256": file_sha256(tmp),
        })
        os.replace(tmp, last)


def saved_state(model_dir: Path, log_csv: Path) -> dict:
    """The training state of the run whose checkpoints are in ``model_dir``: ``epochs_done`` and the
    early-stopping / plateau counters (``train_state.json``); runs from before that file existed fall back to
    the log: epochs done and the best validation loss. Exits with the reason when ``last.keras`` or a readable
    state is missing."""
    last, path = model_dir / LAST_FILE, model_dir / STATE_FILE
    tmp = model_dir / (LAST_FILE + ".tmp.keras")
    if not last.exists() and not tmp.exists():
        sys.exit(f"--resume: {last} not found (the run stopped before its first epoch ended: train it anew, "
                 "without --resume)")
    if path.exists():
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            sys.exit(f"--resume: {path}: cannot read the training state ({err})")
        sha = state.get("checkpoint_sha256")
        if sha and (not last.exists() or file_sha256(last) != sha):
            if not (tmp.exists() and file_sha256(tmp) == sha):
                sys.exit(f"--resume: {last} is not the checkpoint {path} describes (changed since?); train anew")
            os.replace(tmp, last)  # killed between the commit and the rename: finish the rename
            print(f"--resume: the stopped run's last save finished ({last}, epoch {state['epochs_done']})")
        return state
    if not last.exists():
        sys.exit(f"--resume: {last} not found")
    history = pd.read_csv(log_csv) if log_csv.exists() else pd.DataFrame()
    best = float(history["val_loss"].min()) if "val_loss" in history else None
    return {"epochs_done": int(history["epoch"].max()) + 1 if len(history) else 0,
            "early_stopping": {"best": best}, "reduce_lr": {"best": best}}


def how_training_ended(callbacks: list[keras.callbacks.Callback], epochs: int, patience: int,
                       chief: bool = True) -> dict:
    """How the fit with ``callbacks`` (:func:`make_callbacks`) ended, for train_summary.json: ``ended_by``
    "epochs" (all ``epochs``), "early_stopping" (``patience`` epochs without a lower validation loss) or
    "time_budget" (:class:`TimeBudget` has warned already), the epoch it ended after and ``cut_short`` (before
    ``epochs``). An early stop is said on stderr too (on the ``chief``), so that no run ends early unsaid."""
    budget = next(c for c in callbacks if isinstance(c, TimeBudget))
    early = next(c for c in callbacks if isinstance(c, ResumableEarlyStopping))
    if budget.stopped_after:
        ended_by, after = "time_budget", budget.stopped_after
    elif early.stopped_epoch:
        ended_by, after = "early_stopping", early.stopped_epoch + 1
        if chief:
            best = f" below {float(early.best):.4f}" if early.best is not None else ""
            print(f"note: early stopping ended the training after epoch {after} of {epochs}: the validation loss "
                  f"did not fall{best} for {patience} epochs (--patience); best.keras holds the best epoch",
                  file=sys.stderr)
    else:
        ended_by, after = "epochs", epochs
    return {"epochs_planned": epochs, "ended_by": ended_by, "ended_after_epoch": after, "cut_short": after < epochs,
            "stopped_by_time_budget_after_epoch": budget.stopped_after}


def make_callbacks(cfg, run_dir: Path, state: dict, strategy: tf.distribute.Strategy, chief: bool,
                   run_start: float, reserve: float) -> list[keras.callbacks.Callback]:
    """The fit's callbacks for the settings ``cfg`` (train.py's Config), in the order they run at the end of an
    epoch: the ones that decide (early stopping, a learning-rate cut) before the ones that save, so that
    last.keras and train_state.json hold the state after that epoch's decisions (a cut in the last epoch before
    a stop survives --resume), the commit of last.keras and train_state.json last."""
    model_dir = run_dir / "model"
    early = ResumableEarlyStopping(state.get("early_stopping"), monitor="val_loss", patience=cfg.patience)
    plateau = ResumableReduceLROnPlateau(state.get("reduce_lr"), monitor="val_loss", factor=0.5, patience=3,
                                         min_lr=1e-5)
    return [
        early,
        plateau,
        AtomicModelCheckpoint(str(model_dir / "best.keras"), monitor="val_loss", save_best_only=True,
                              initial_value_threshold=state.get("early_stopping", {}).get("best")),
        ResumableCSVLogger(str(run_dir / "train_log.csv"), append=cfg.resume and chief,
                           epochs_done=state["epochs_done"]),
        TimeBudget(cfg.time_budget_min, strategy, run_start, reserve),
        SaveLastAndState(model_dir, early, plateau),
        StepProgress(state["epochs_done"], cfg.time_budget_min * 60, run_start, reserve),
    ]
