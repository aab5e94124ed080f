"""The U-Net's shapes, a few training steps lowering the loss, train.py outputs and --resume."""
from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest

from airbus_ships.data import make_dataset, read_mask_table
from airbus_ships.losses import CUSTOM_OBJECTS, SmallShipBceDiceLoss, bce_dice_loss, dice_coef, iou_coef
from airbus_ships.model import build_unet


@pytest.mark.parametrize("size", [256, 768])
def test_output_shape(size):
    model = build_unet((4, 8, 16, 32), bottleneck_rates=(1, 2))
    out = model(np.zeros((1, size, size, 3), np.uint8))
    assert out.shape == (1, size, size, 1)
    assert float(np.min(out)) >= 0 and float(np.max(out)) <= 1  # sigmoid


def test_default_model_is_a_five_level_unet():
    model = build_unet((8, 16, 32, 64, 128))
    names = [layer.name for layer in model.layers]
    assert sum(n.startswith("pool") for n in names) == 5 and "bottleneck_d4" in names
    assert model.output_shape == (None, None, None, 1)


def test_small_ship_loss_weighs_small_ships_more():
    """Missing 12 pixels of a 12-pixel ship costs more than missing 12 inside a 1,200-pixel ship under the
    weighted loss; with weight 0 it is the plain loss; it survives a config round trip (checkpoints)."""
    y = np.zeros((1, 64, 64, 1), np.float32)
    y[0, 5:8, 5:9] = 1        # small ship: 12 px
    y[0, 20:50, 20:60] = 1    # large ship: 1,200 px
    good = np.where(y > 0, 0.9, 0.1).astype(np.float32)
    miss_small, miss_large = good.copy(), good.copy()
    miss_small[0, 5:8, 5:9] = 0.1
    miss_large[0, 34:37, 38:42] = 0.1  # 12 px in the middle of the large ship
    plain, weighted = bce_dice_loss, SmallShipBceDiceLoss(5.0)
    assert abs(float(plain(y, miss_small)) - float(plain(y, miss_large))) < 1e-6  # the plain loss cannot tell
    assert float(weighted(y, miss_small)) > float(weighted(y, miss_large)) + 1e-3
    assert abs(float(SmallShipBceDiceLoss(0.0)(y, miss_small)) - float(plain(y, miss_small))) < 1e-6
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(weighted),
                                                  custom_objects=CUSTOM_OBJECTS)
    assert (again.small_ship_weight, again.window) == (5.0, 15)


def test_few_training_steps_lower_the_loss(demo_dir):
    keras.utils.set_random_seed(0)
    frame = read_mask_table(demo_dir / "masks.csv", demo_dir / "images").frame
    x, y = next(iter(make_dataset(frame, batch_size=4, input_size=128, empty_share=0.25, seed=0)))
    model = build_unet((8, 16, 32))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=bce_dice_loss, metrics=[dice_coef, iou_coef])
    losses = [float(model.train_on_batch(x, y, return_dict=True)["loss"]) for _ in range(20)]
    assert min(losses[-3:]) < losses[0] - 0.1, losses


def test_train_script_outputs_and_resume(trained_run):
    model_dir = trained_run / "model"
    for name in ("best.keras", "last.keras", "config.json", "postprocess.json"):
        assert (model_dir / name).is_file(), name
    assert (trained_run / "training_curves.png").stat().st_size > 1000
    log = pd.read_csv(trained_run / "train_log.csv")
    assert list(log["epoch"]) == [0, 1, 2]  # two epochs, then one more after --resume
    assert {"loss", "val_loss", "dice_coef", "val_iou_coef"} <= set(log.columns)
    rule = json.loads((model_dir / "postprocess.json").read_text())
    assert {"threshold", "min_size", "min_confidence"} <= set(rule)
    assert (rule["n_val_images"], rule["n_train_images"], rule["n_images"]) == (3, 2, 5)  # topped up
    model = keras.saving.load_model(model_dir / "best.keras", custom_objects=CUSTOM_OBJECTS, safe_mode=True)
    assert model.output_shape[-1] == 1
    assert not list(trained_run.rglob("*.tmp*"))  # atomic writes leave no temporary file
    summary = json.loads((trained_run / "train_summary.json").read_text())
    assert summary["rule_minutes_reserved"] > 0 and summary["run_minutes"] >= summary["train_minutes"]


@pytest.mark.parametrize("reserve_s, stops", [(5.0, False), (15.0, True)])
def test_time_budget_keeps_time_for_the_ship_rule(reserve_s, stops):
    """50 s into a 60 s budget, an epoch that leaves the rule's reserve no room must not start."""
    import time

    import tensorflow as tf

    from airbus_ships.train import TimeBudget

    budget = TimeBudget(1.0, tf.distribute.get_strategy(), start=time.time() - 50, reserve_s=reserve_s)
    model = build_unet((4, 8))
    model.stop_training = False
    budget.set_model(model)
    budget.on_epoch_end(0)  # this "epoch" took ~0 s: 50 + 0 + reserve against 60
    assert bool(model.stop_training) is stops
