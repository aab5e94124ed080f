"""The training time budget (``--time-budget-min``): how many epochs fit, and when to stop.

Before training, a few timed steps say how long an epoch takes here; when the asked epochs would not fit, the run
plans fewer (the learning-rate schedule then spans those). During training, an epoch that would end past the
budget is not started. Under torchrun every process plans and stops with the slowest one.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from minerals.runtime import all_reduce

RESERVE_S = 30.0  # of the time budget, kept for the final evaluation, val_predictions.csv and the export


def time_one_epoch(model, train_dl, val_pass: Callable[[], object], weights, device, steps: int = 5) -> float:
    """Seconds one epoch (its training steps + a validation pass) should take here: the median of ``steps`` timed
    training steps (after one untimed warm-up step) times the steps of an epoch, plus the faster of two timed
    ``val_pass`` calls (medians and minima: one hiccup of the machine must not halve the planned epochs).

    Forward and backward only, no optimizer step; the weights, BatchNorm statistics and random state are put back
    afterwards, so the run that follows is the one that would have run without this probe.
    """
    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    def step(batches) -> None:
        x, y = next(batches)
        x = x.to(device, memory_format=torch.channels_last)
        F.cross_entropy(model(x), y.to(device), weight=weights).backward()

    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model.train()
        batches = iter(train_dl)
        times = [timed(lambda: step(batches)) for _ in range(min(steps + 1, len(train_dl)))]
        per_step = float(np.median(times[1:] or times))
        val_seconds = min(timed(val_pass) for _ in range(2))
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    return per_step * len(train_dl) + val_seconds


def epochs_within_budget(epochs: int, epoch_seconds: float, budget_seconds: float, spent_seconds: float,
                         reserve_seconds: float = RESERVE_S, margin: float = 1.1) -> int:
    """How many of ``epochs`` fit in what is left of the budget (at least 1): each epoch counted ``margin`` times
    its estimate, and ``reserve_seconds`` kept for the final evaluation and the export."""
    left = budget_seconds - spent_seconds - reserve_seconds
    return max(1, min(epochs, int(left // (epoch_seconds * margin))))


def plan_epochs(model, train_dl, val_pass, weights, epochs: int, budget_min: float, device, started: float,
                log=print) -> tuple[int, float]:
    """(epochs that fit the time budget of a run started at ``started``, estimated seconds an epoch); every process
    plans the slowest one's."""
    epoch_seconds = time_one_epoch(model, train_dl, val_pass, weights, device)
    epoch_seconds = all_reduce([epoch_seconds], device, dist.ReduceOp.MAX)[0]
    fits = epochs_within_budget(epochs, epoch_seconds, 60 * budget_min, time.time() - started)
    log(f"an epoch takes about {epoch_seconds:.1f} s here: {epochs} epochs ~ {epochs * epoch_seconds / 60:.1f}"
        f" min; budget {budget_min:g} min for the whole run"
        + ("" if fits == epochs else f": planning {fits} epochs instead (--time-budget-min 0 for all)"))
    return fits, epoch_seconds


def past_budget(projected_seconds: float, budget_min: float, device) -> bool:
    """Whether ``projected_seconds`` (from the run's start) ends past the budget, final reserve included, on any
    process (all processes then stop together)."""
    over = float(projected_seconds > 60 * budget_min - RESERVE_S)
    return bool(all_reduce([over], device, dist.ReduceOp.MAX)[0])
