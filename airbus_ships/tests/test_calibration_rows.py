"""Which images the ship rule is chosen on: validation first, topped up with training images (no TensorFlow)."""
from __future__ import annotations

import pandas as pd

from airbus_ships.inference import calibration_rows


def frame(prefix: str, n: int) -> pd.DataFrame:
    return pd.DataFrame({"ImageId": [f"{prefix}{i}.jpg" for i in range(n)], "rle": [""] * n})


def ids(rows: pd.DataFrame) -> list[str]:
    return list(rows["ImageId"])


def test_all_validation_rows_then_a_seeded_top_up():
    val, train = frame("v", 22), frame("t", 125)
    val_rows, train_rows = calibration_rows(val, train, 30, seed=0)
    assert sorted(ids(val_rows)) == sorted(ids(val))  # every validation image
    assert len(train_rows) == 8 and set(ids(train_rows)) <= set(ids(train))
    assert ids(calibration_rows(val, train, 30, seed=0)[1]) == ids(train_rows)  # same seed, same top-up
    assert ids(calibration_rows(val, train, 30, seed=1)[1]) != ids(train_rows)
    # more than both hold: everything, once
    val_rows, train_rows = calibration_rows(val, train, 200, seed=0)
    assert len(val_rows) == 22 and sorted(ids(train_rows)) == sorted(ids(train))


def test_no_training_rows_when_validation_suffices():
    val, train = frame("v", 300), frame("t", 50)
    val_rows, train_rows = calibration_rows(val, train, 200, seed=0)
    assert len(val_rows) == 200 and len(set(ids(val_rows))) == 200 and train_rows.empty
    assert ids(val_rows) == ids(val.sample(200, random_state=0))  # what train.py chose before the top-up

