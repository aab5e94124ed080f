"""Options a script cannot use stop it before any work, with the option named (no model, no training)."""
from __future__ import annotations

import pytest

from wood_anomaly import predict, train


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
