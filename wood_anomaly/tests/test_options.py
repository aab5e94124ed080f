"""Options a script cannot use stop it before any work, with the option named (no model, no training)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.io import save_image
from wood_anomaly import config, predict, train
from wood_anomaly.tests.conftest import TINY


@pytest.mark.parametrize("option, value", [("--pad", "30"), ("--tile", "300"), ("--tile", "126"),
                                           ("--overlap", "30"), ("--overlap", "200"), ("--stages", "1,9"),
                                           ("--deep-weight", "1.5"), ("--device", "gpu"),
                                           ("--threads", "-1")])
def test_train_rejects_settings_predict_cannot_use(option, value, capsys):
    with pytest.raises(SystemExit) as exc:
        train.parse_args([option, value])
    assert exc.value.code == 2 and f"{option} " in capsys.readouterr().err


def test_predict_has_no_seed_option(capsys):
    """The reference cells are drawn with the checkpoint's training seed; predict.py takes no seed of its own."""
    with pytest.raises(SystemExit) as exc:
        predict.parse_args(["--seed", "1"])
    assert exc.value.code == 2 and "--seed" in capsys.readouterr().err


def test_photos_too_small_to_score():
    """A 1x1 photo got a map and the label 'normal'. The defaults need 24 px per side after halving: 48 px."""
    default, tiny = config.TrainConfig(), train.parse_args(TINY)
    assert "too small to score: 1 x 1 px" in config.too_small(1, 1, default)
    assert "at least 48 x 48 px" in config.too_small(46, 400, default)
    assert config.too_small(48, 48, default) is None and config.too_small(1952, 2592, default) is None
    assert config.too_small(24, 24, tiny) is None and config.too_small(23, 300, tiny)


def test_help_shows_no_empty_default(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "(default: 2000)" in text and "(default: )" not in text and "(default: None)" not in text


def test_bare_commands_use_the_demo_run_when_there_is_no_other(tmp_path, monkeypatch, capsys):
    """After make demo only runs/wood_demo exists: the bare predict.py and evaluate.py use it (and say so)
    instead of stopping at the missing runs/wood; once make train-wood has written runs/wood, that one."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "wood").mkdir(parents=True)
    save_image(tmp_path / "data" / "wood" / "board.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "runs" / "wood_demo" / "pred").mkdir(parents=True)
    for name in ("model.pt", "pred/predictions.csv"):
        (tmp_path / "runs" / "wood_demo" / name).write_text("")
    args = predict.parse_args([])
    assert (args.model, args.out) == ("runs/wood_demo/model.pt", "runs/wood_demo/pred")
    assert config.default_run("pred/predictions.csv") == Path("runs/wood_demo")
    assert "--model runs/wood_demo/model.pt" in capsys.readouterr().err
    (tmp_path / "runs" / "wood").mkdir()
    (tmp_path / "runs" / "wood" / "model.pt").write_text("")
    assert predict.parse_args([]).model == "runs/wood/model.pt"
    assert predict.parse_args(["--model", "runs/x/model.pt"]).out == "runs/x/pred"  # beside the model
