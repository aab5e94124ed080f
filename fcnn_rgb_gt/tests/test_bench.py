"""bench.py's bookkeeping on hand-made reports (no training): seed grouping, the seed table, the skip rule; the training
commands of the ablation and oracle rows against the stored benchmarks/fcnn.json."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fcnn_rgb_gt import bench, demo_data
from fcnn_rgb_gt.data import REPO_ROOT


def _row(strip: float, a: float, b: float) -> dict:
    cell = lambda v: {"iou_0.5": v, "iou_strip": v, "iou_0.5_tta": v}  # noqa: E731
    return {"flags": "--x", "strip_threshold": 0.5, "train_seconds": 1.0, "val_strip": cell(strip),
            "pairs": {"p1": cell(a), "p2": cell(b)}}


def _report() -> dict:
    runs = {"v": _row(0.3, 0.2, 0.4), "v_seed1": _row(0.5, 0.4, 0.6), "w": _row(0.1, 0.1, 0.1)}
    oracle = {"p1": {**_row(0.6, 0.5, 0.5), "fit": {
        "best": {"epoch": 3, "iou_training_region": 0.45, "iou_own_strip": 0.61},
        "last": {"epoch": 9, "iou_training_region": 0.56, "iou_own_strip": 0.55}}}}
    for r in oracle.values():
        r["pairs"] = {"p1": r["pairs"]["p1"]}
    return {"machine": "m", "load_avg_at_start": [1], "train": {"command": "c", "epochs_run": 1, "best_epoch": 1,
            "val_iou_at_0.5": 0.1, "val_iou_at_threshold": 0.1, "threshold": 0.5}, "extra": {},
            "ablations": {"command": "c", "note": "n", "runs": runs},
            "oracle_epochs_64": {"command": "c", "what": "w", "runs": oracle}}


def test_seed_groups_and_spread():
    groups = bench.seed_groups(_report()["ablations"]["runs"])
    assert {k: len(v) for k, v in groups.items()} == {"v": 2, "w": 1}
    assert bench.spread([0.2, 0.4]) == "0.300 [0.200-0.400]"


def test_markdown_has_seed_table_and_fit_columns():
    md = bench.markdown(_report())
    assert "| v | 2 | 0.400 [0.300-0.500] | 0.300 [0.200-0.400] | 0.500 [0.400-0.600] |" in md
    assert "| w | 1 |" not in md  # single-seed variants stay out of the seed table
    assert "0.56 / 0.55 (epoch 9)" in md and "0.45 / 0.61 (epoch 3)" in md


def test_bench_skips_demo_data(tmp_path, capsys):
    demo_data.write(tmp_path / "fcnn" / "train_substitute", seed=0, size=(160, 200))
    assert bench.main(["--data", str(tmp_path / "fcnn"), "--out", str(tmp_path / "b.json")]) == 0
    assert "skipped" in capsys.readouterr().out and not (tmp_path / "b.json").exists()


def test_seam_check_compares_tiles_with_one_untiled_pass(trained_run, pair_dir):
    r = bench.seam_check(trained_run / "best.pt", pair_dir / "rgb.png", tile=64, overlap=16)
    assert r["size"] == [200, 160] and r["blended"]["pixels"] == r["plain"]["pixels"] == 200 * 160
    assert r["plain"]["max_abs_diff"] > 0.3  # zero padding at plain tile borders, with trained weights
    assert r["blended"]["max_abs_diff"] < r["plain"]["max_abs_diff"] / 6
    assert r["blended"]["pixels_changed_class"] <= r["plain"]["pixels_changed_class"]


def test_rows_of_another_command_are_not_merged(capsys):
    report = {"ablations": {"command": "old", "runs": {"v": {"x": 1}}}}
    assert bench.kept_rows(report, "ablations", "old") == {"v": {"x": 1}}
    assert bench.kept_rows(report, "ablations", "new") == {} and "replaced" in capsys.readouterr().out
    assert bench.kept_rows(report, "oracle", "any") == {}


def test_a_rerun_joins_rows_stored_with_a_thread_count(capsys):
    """oracle_epochs_64's stored command names --threads 1 (how fast it ran), which bench.py never writes: a rerun
    of one pair kept none of the table's rows. Thread count and device are set aside; any other difference is not."""
    stored = json.loads((REPO_ROOT / "benchmarks" / "fcnn.json").read_text())["oracle_epochs_64"]
    rerun = bench.shown_train("<data>/extra/<pair>", bench.oracle_args(0, ["--epochs", "64"]))
    assert "--threads" in stored["command"] and "--threads" not in rerun
    assert bench.kept_rows({"oracle_epochs_64": stored}, "oracle_epochs_64", rerun) == stored["runs"]
    assert bench.kept_rows({"oracle_epochs_64": stored}, "oracle_epochs_64", rerun + " --device cuda") == stored["runs"]
    assert bench.kept_rows({"oracle_epochs_64": stored}, "oracle_epochs_64", rerun.replace("64", "32")) == {}
    assert "replaced" in capsys.readouterr().out


def test_bench_without_test_pairs_is_one_line_before_any_training(tmp_path, capsys, monkeypatch):
    # real training data but no extra/: a FileNotFoundError traceback; an empty extra/ or pairs without gt.png:
    # a min() or ImageReadError traceback after the whole training run
    import numpy as np
    from PIL import Image

    train_dir = tmp_path / "fcnn" / "train_substitute"
    train_dir.mkdir(parents=True)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(train_dir / "rgb.png")
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(train_dir / "gt.png")
    monkeypatch.setattr(bench, "train_run", lambda *a, **k: pytest.fail("trained"))
    args = ["--data", str(tmp_path / "fcnn"), "--out", str(tmp_path / "b.json"), "--runs", str(tmp_path / "runs")]
    for make_extra in (False, True):
        if make_extra:  # a pair folder without its gt.png cannot be scored either
            (tmp_path / "fcnn" / "extra" / "p1").mkdir(parents=True)
            Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "fcnn" / "extra" / "p1" / "rgb.png")
        assert bench.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'fcnn' / 'extra'}: no test pair"), err
    assert not (tmp_path / "b.json").exists()


def test_unknown_ablation_or_oracle_names_are_refused_before_any_training(tmp_path, capsys, monkeypatch):
    # a mistyped --ablate / --oracle name was silently skipped: nothing trained, exit 0, the report rewritten
    import numpy as np
    from PIL import Image

    with pytest.raises(SystemExit) as exit_:
        bench.main(["--ablate", "plain_wce_lr1e3"])
    assert exit_.value.code == 2 and "plain_wce_lr1e3" in capsys.readouterr().err
    for sub in ("train_substitute", "extra/p1"):
        (tmp_path / "fcnn" / sub).mkdir(parents=True)
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "fcnn" / sub / "rgb.png")
        Image.fromarray(np.full((40, 40), 255, np.uint8)).save(tmp_path / "fcnn" / sub / "gt.png")
    monkeypatch.setattr(bench, "train_run", lambda *a, **k: pytest.fail("trained"))
    assert bench.main(["--data", str(tmp_path / "fcnn"), "--out", str(tmp_path / "b.json"), "--oracle", "p2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --oracle: no test pair p2") and "p1" in err[0], err
    assert not (tmp_path / "b.json").exists()


def test_ablation_and_oracle_reruns_train_as_their_stored_rows_were(monkeypatch):
    """The stored ablation and oracle rows were measured at 8 crops per step (before 2026-12-04); bench.py trained
    a rerun at train.py's default (4 now) and wrote a command without the batch, so rerunning one variant dropped
    the stored rows. The train.py arguments it runs for every stored row are those of the row's stored command
    (``--threads``, how fast a run went, aside: bench.py leaves it out of its commands)."""
    report = json.loads((REPO_ROOT / "benchmarks" / "fcnn.json").read_text())
    ran = []
    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, **kwargs: ran.append(cmd))

    def train_args(data: str, args: list[str]) -> list[str]:  # what train_run gives train.py besides --data, --out
        bench.train_run(Path(data), Path("runs"), args)
        cmd = ran.pop()
        return cmd[cmd.index("--out") + 2:]

    def settings(command: str) -> list[str]:  # a stored command's train.py arguments besides --data
        return bench.measured(command).split()[4:]  # python fcnn_rgb_gt/train.py --data <data>/...

    ablations = report["ablations"]
    for name, row in ablations["runs"].items():
        variant, _, seed = name.partition("_seed")
        flags, row_name = bench.ablation_flags(variant, int(seed or 0))
        assert (row_name, " ".join(flags)) == (name, row["flags"])
        stored = ablations["command"].replace("<flags>", row["flags"])
        assert train_args("<data>/train_substitute", bench.ABLATION_BUDGET + flags) == settings(stored), name
    assert ablations["command"] == bench.shown_train("<data>/train_substitute", [*bench.ABLATION_BUDGET, "<flags>"])
    for key, extra in (("oracle", []), ("oracle_epochs_64", ["--epochs", "64"])):
        assert train_args("<data>/extra/<pair>", bench.oracle_args(0, extra)) == settings(report[key]["command"]), key
    assert report["oracle"]["command"] == bench.shown_train("<data>/extra/<pair>", bench.oracle_args(0, []))
