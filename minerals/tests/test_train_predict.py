import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from minerals import budget, train
from minerals.config import CLASSES, MINERALS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_training_writes_checkpoints_with_threshold(run):
    for name in ("best.pt", "last.pt", "config.json", "log.csv", "curves.png", "model.onnx", "model_summary.txt",
                 "split.csv", "val_predictions.csv", "calibration.json", "result.json"):
        assert (run / name).exists(), name
    ck = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    assert ck["classes"] == CLASSES and 0.0 <= ck["threshold"] < 1.0
    assert {"model", "optimizer", "epoch", "best_metric", "config"} <= set(ck)
    import onnx

    onnx.checker.check_model(onnx.load(str(run / "model.onnx")))


@pytest.mark.slow
def test_split_keeps_groups_apart(run):
    import csv

    with open(run / "split.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    side = {}
    for r in rows:
        assert side.setdefault(r["group"], r["split"]) == r["split"], r["group"]
    assert {r["split"] for r in rows} == {"train", "val"}


def predict(args, cwd=ROOT):
    p = subprocess.run([sys.executable, str(ROOT / "minerals" / "predict.py")] + args, capture_output=True,
                       text=True, cwd=cwd)
    return p.returncode, p.stdout, p.stderr


@pytest.mark.slow
def test_predict_threshold_rule(run, samples, capsys):
    from minerals import predict as predict_module

    patches = sorted((samples / "patches" / "pyrite").glob("*.jpg"))[:3]
    for threshold in (0.0, 0.5, 0.99):
        rc = predict_module.main([*map(str, patches), "--checkpoint", str(run / "best.pt"),
                                  "--threshold", str(threshold)])
        res = json.loads(capsys.readouterr().out)
        assert rc == 0 and list(res) == [p.name for p in patches]
        for r in res.values():
            assert set(r) == {"confidence", "result"} and isinstance(r["confidence"], float)
            assert r["result"] in MINERALS + ["unknown"]
            assert (r["result"] == "unknown") == (r["confidence"] < threshold)  # below it: "unknown"
            assert threshold > 0 or r["result"] != "unknown"  # a zero threshold rejects nothing


@pytest.mark.slow
def test_predict_cli_default_threshold_and_corrupt_file(run, samples, tmp_path):
    folder = tmp_path / "batch"
    folder.mkdir()
    for p in sorted((samples / "patches").rglob("*.jpg"))[::6]:
        (folder / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / "empty.png").write_bytes(b"")
    rc, out, err = predict([str(folder), "--checkpoint", str(run / "best.pt"), "--threads", "1"],
                           cwd=tmp_path)  # from any folder
    res = json.loads(out)  # stdout holds the JSON and nothing else
    assert rc == 1 and "broken.jpg" in err and "empty.png" in err
    assert len(res) == len(list(folder.iterdir()))
    assert all(set(r) == {"confidence", "result"} and isinstance(r["confidence"], float) for r in res.values())
    for bad in ("broken.jpg", "empty.png"):  # named on stderr, and in the brief's format in the JSON
        assert res[bad] == {"confidence": 0.0, "result": "unknown"} and f"{bad}:" in err
    thr = torch.load(run / "best.pt", map_location="cpu", weights_only=True)["threshold"]
    assert f"threshold {thr:.2f}" in err  # the checkpoint's threshold by default
    assert all((r["result"] == "unknown") == (r["confidence"] < thr) for r in res.values())


@pytest.mark.slow
def test_evaluate_on_run(run, samples, tmp_path):
    from minerals import evaluate

    report = evaluate.main(["--checkpoint", str(run / "best.pt"), "--data", str(samples), "--out", str(tmp_path)])
    assert 0 <= report["closed_set"]["accuracy"] <= 1
    for name in ("metrics.json", "confusion_matrix.png", "confusion_matrix_open_set.png", "threshold_curve.png",
                 "errors.png"):
        assert (tmp_path / name).exists()
    # errors.csv: one row per closed-set mistake of the confusion matrix, each a real patch
    with open(tmp_path / "errors.csv", newline="") as f:
        errors = list(csv.DictReader(f))
    cm = np.array(report["closed_set"]["confusion_matrix"])
    assert len(errors) == cm.sum() - np.trace(cm)
    assert all(Path(e["file"]).exists() and e["label"] != e["predicted"] for e in errors)


@pytest.mark.slow
def test_a_run_of_a_removed_option_is_refused_on_resume_and_loads_for_prediction(samples, tmp_path):
    """A checkpoint of an earlier version holds options since removed: at their "off" value it resumes and
    predicts as before; a run that used one (here --quarter-turns) cannot be continued and says so."""
    from minerals import predict as predict_module

    args = ["--data", str(samples), "--out", str(tmp_path), "--epochs", "2", "--img-size", "32", "--width", "0.5",
            "--batch-size", "16", "--threads", "1", "--no-export", "--time-budget-min", "0"]
    train.main(args + ["--max-steps", "1"])
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    old = {"quarter_turns": False, "augment": "basic", "ema_decay": 0.0, "head_epochs": 0, "tta": False,
           "train_share": 1.0}
    torch.save({**ck, "config": {**ck["config"], **old}}, tmp_path / "old.pt")
    train.main(["--resume", str(tmp_path / "old.pt"), "--data", str(samples), "--out", str(tmp_path / "on"),
                "--threads", "1"])
    assert [h["epoch"] for h in torch.load(tmp_path / "on" / "last.pt", weights_only=True)["history"]] == [1, 2]
    predict_module.load_classifier(tmp_path / "old.pt", torch.device("cpu"), jit=False)
    torch.save({**ck, "config": {**ck["config"], **old, "quarter_turns": True}}, tmp_path / "turned.pt")
    with pytest.raises(SystemExit, match="--quarter-turns True, which this version no longer has"):
        train.main(["--resume", str(tmp_path / "turned.pt"), "--data", str(samples), "--out", str(tmp_path / "x")])


@pytest.mark.slow
def test_resume_continues_exactly_with_the_runs_own_settings(samples, tmp_path, capsys):
    """A run stopped after epoch 1 and resumed ends bit for bit where an uninterrupted run ends (weights, log,
    augmentation and MixUp draws); a setting changed on the resume command line is reported and not used."""
    args = ["--data", str(samples), "--epochs", "2", "--img-size", "32", "--width", "0.5", "--batch-size", "16",
            "--threads", "1", "--no-export", "--time-budget-min", "0", "--mix", "0.5"]
    train.main(args + ["--out", str(tmp_path / "whole")])
    with open(tmp_path / "whole" / "split.csv", newline="") as f:
        steps_per_epoch = sum(r["split"] == "train" for r in csv.DictReader(f)) // 16
    train.main(args + ["--out", str(tmp_path / "cut"), "--max-steps", str(steps_per_epoch)])  # stops after epoch 1
    assert len(torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["history"]) == 1
    shutil.copytree(tmp_path / "cut", tmp_path / "early")  # the run after epoch 1, for the move below
    capsys.readouterr()
    train.main(["--resume", str(tmp_path / "cut" / "last.pt"), "--out", str(tmp_path / "cut"), "--data", str(samples),
                "--lr", "0.5", "--threads", "1", "--no-export"])
    assert "lr=0.004 (command line: 0.5)" in capsys.readouterr().err
    whole, cut = (torch.load(tmp_path / d / "last.pt", weights_only=True) for d in ("whole", "cut"))
    assert whole["model"].keys() == cut["model"].keys()
    assert all(torch.equal(whole["model"][k], cut["model"][k]) for k in whole["model"])
    assert [h["train_loss"] for h in whole["history"]] == [h["train_loss"] for h in cut["history"]]
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["lr"] == 0.004
    # resumed into another folder, no later epoch beating the best so far: the run's best.pt comes along
    early = torch.load(tmp_path / "early" / "last.pt", weights_only=True)
    torch.save({**early, "best_metric": 1e9}, tmp_path / "early" / "last.pt")  # epoch 2 cannot beat it
    train.main(["--resume", str(tmp_path / "early" / "last.pt"), "--out", str(tmp_path / "moved"),
                "--data", str(samples), "--threads", "1", "--no-export"])
    assert torch.load(tmp_path / "moved" / "best.pt", weights_only=True)["epoch"] == 1
    assert json.loads((tmp_path / "moved" / "result.json").read_text())["best_epoch"] == 1
    # a finished run has nothing left to train: refused (it rewrote result.json with a train time of 0 s)
    result = (tmp_path / "cut" / "result.json").read_text()
    with pytest.raises(SystemExit, match="done all the 2 epochs"):
        train.main(["--resume", str(tmp_path / "cut" / "last.pt"), "--data", str(samples), "--threads", "1"])
    assert (tmp_path / "cut" / "result.json").read_text() == result
    with pytest.raises(SystemExit, match="junk.pt: not a PyTorch checkpoint"):
        (tmp_path / "junk.pt").write_text("not a checkpoint")
        train.main(["--resume", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "junk")])


def test_epochs_within_budget():
    # 10 min left after 30 s spent and 30 s kept back, epochs of 10 s counted 11 s: 54 fit
    assert budget.epochs_within_budget(100, 10.0, 660.0, 30.0) == 54
    assert budget.epochs_within_budget(20, 10.0, 660.0, 30.0) == 20  # never more than asked
    assert budget.epochs_within_budget(100, 10.0, 60.0, 50.0) == 1  # at least one epoch


@pytest.mark.slow
def test_time_budget_probe_changes_nothing_and_plans_fewer_epochs(samples, tmp_path):
    """The timing probe leaves weights and random state as they were: the same run with and without it; a budget
    too small for the asked epochs plans fewer and records them."""
    args = ["--data", str(samples), "--epochs", "2", "--img-size", "32", "--width", "0.5", "--batch-size", "16",
            "--threads", "1", "--no-export"]
    without = train.main(args + ["--out", str(tmp_path / "a"), "--time-budget-min", "0"])
    with_probe = train.main(args + ["--out", str(tmp_path / "b")])
    assert without["epoch_seconds_estimate"] is None and with_probe["epoch_seconds_estimate"] > 0
    assert (tmp_path / "a" / "log.csv").read_text().split("\n")[1].split(",")[:7] == \
        (tmp_path / "b" / "log.csv").read_text().split("\n")[1].split(",")[:7]
    assert [without[k] for k in ("accuracy", "macro_f1", "threshold")] == \
        [with_probe[k] for k in ("accuracy", "macro_f1", "threshold")]
    tight = train.main(args + ["--out", str(tmp_path / "c"), "--time-budget-min", "0.001"])
    assert tight["epochs_planned"] == 1
    assert json.loads((tmp_path / "c" / "config.json").read_text())["epochs"] == 1


@pytest.mark.slow
def test_time_budget_stops_a_run_that_falls_behind(samples, tmp_path, monkeypatch):
    """An epoch slower than estimated: the run stops before the epoch that would end past the budget, keeping
    its checkpoints."""
    monkeypatch.setattr(budget, "time_one_epoch", lambda *a, **k: 1e-6)  # the probe promises instant epochs
    monkeypatch.setattr(budget, "epochs_within_budget", lambda epochs, *a, **k: epochs)  # all 3 planned
    result = train.main(["--data", str(samples), "--out", str(tmp_path), "--epochs", "3", "--img-size", "32",
                         "--width", "0.5", "--batch-size", "16", "--threads", "1", "--no-export",
                         "--time-budget-min", "0.5"])  # 30 s: all of it the final reserve
    assert result["epochs_planned"] == 3 and result["best_epoch"] == 1
    assert [h["epoch"] for h in torch.load(tmp_path / "last.pt", weights_only=True)["history"]] == [1]


@pytest.mark.slow
def test_time_budget_also_stops_a_resumed_run(samples, tmp_path, monkeypatch):
    """--time-budget-min may change on --resume; it used to be ignored there (no probe, so no stop at all)."""
    args = ["--data", str(samples), "--out", str(tmp_path), "--epochs", "3", "--img-size", "32", "--width", "0.5",
            "--batch-size", "16", "--threads", "1", "--no-export"]
    train.main(args + ["--time-budget-min", "0", "--max-steps", "1"])  # stops in epoch 1 of 3
    train.main(["--resume", str(tmp_path / "last.pt"), *args, "--time-budget-min", "0.5"])  # 30 s: all reserve
    assert [h["epoch"] for h in torch.load(tmp_path / "last.pt", weights_only=True)["history"]] == [1, 2]


@pytest.mark.parametrize("option, value", [("--epochs", "-1"), ("--val-fold", "5"), ("--val-fold", "-2"),
                                           ("--n-folds", "1"), ("--batch-size", "0"), ("--threads", "0"),
                                           ("--time-budget-min", "-1"), ("--mix", "nan"),
                                           ("--crop-scale", "0"), ("--img-size", "-8"), ("--width", "0"),
                                           ("--seed", "-1"), ("--split-seed", "-2")])
def test_option_values_that_cannot_train_are_refused(option, value, capsys):
    with pytest.raises(SystemExit) as exc:
        train.parse_args([option, value])
    assert exc.value.code == 2 and f"{option} " in capsys.readouterr().err


@pytest.mark.slow
def test_frozen_network_gives_the_eager_probabilities(run, samples):
    """predict.py's TorchScript-frozen network (the CPU default) against the plain one, on batches of 32 and a
    last batch of another size."""
    from minerals import predict as predict_module

    files = sorted((Path(samples) / "patches").rglob("*.jpg"))[:45]
    out = {}
    for jit in (False, True):
        model, meta = predict_module.load_classifier(run / "best.pt", torch.device("cpu"), jit=jit)
        out[jit] = np.stack([p for _, p, _ in predict_module.predict_probs(model, files, meta["img_size"],
                                                                           torch.device("cpu"))])
    assert isinstance(model, torch.jit.ScriptModule) and out[True].shape == (45, len(CLASSES))
    np.testing.assert_allclose(out[True], out[False], atol=1e-5)


def test_split_seed_keeps_the_split_while_the_training_seed_changes(samples):
    def val_patches(*flags):
        cfg = train.parse_args(["--data", str(samples), "--img-size", "32", *flags])
        return sorted(r["patch"] for r in train.make_loaders(cfg)[1])

    default = val_patches()
    assert val_patches("--seed", "1", "--split-seed", "0") == default
    assert val_patches("--seed", "0", "--split-seed", "1") == val_patches("--seed", "1")  # -1: the split follows --seed
    assert val_patches("--seed", "1") != default


def test_photos_option_trains_on_the_whole_photo_of_each_cut_out_patch_too(samples, photos, tmp_path):
    """--photos: every training mineral patch cut from a larger photo is joined by that photo (same label and
    group); the whole-image fallbacks and the negatives are not doubled; validation keeps the patches only; a
    folder without the photos is an error naming one. The default (auto): the folder extract_samples.py recorded,
    for the transfer backbones only; none without the record; "" turns it off."""
    from minerals.data import read_index, with_photos

    rows = read_index(samples)
    cut = [r for r in rows if r["kind"] == "positive" and r["method"] != "full"]
    extra = with_photos(rows, photos)[len(rows):]
    assert len(extra) == len(cut) > 0
    for r, e in zip(cut, extra):
        assert Path(e["file"]) == photos / r["source"] and Path(e["file"]).is_file()
        assert (e["label"], e["group"]) == (r["label"], r["group"])
    cfg = train.parse_args(["--data", str(samples), "--img-size", "32", "--photos", str(photos)])
    train_rows, val_rows, train_dl, val_dl = train.make_loaders(cfg)
    n_cut = sum(r["kind"] == "positive" and r["method"] != "full" for r in train_rows)
    assert len(train_dl.dataset) == len(train_rows) + n_cut and len(val_dl.dataset) == len(val_rows)
    with pytest.raises(FileNotFoundError, match="source photos of the patches are not in"):
        with_photos(rows, tmp_path)
    recorded = str(photos.resolve())
    assert (samples / "photos.txt").read_text().strip() == recorded
    lite0 = ["--backbone", "efficientnet_lite0"]
    assert train.parse_args(["--data", str(samples), *lite0]).photos == recorded
    assert train.parse_args(["--data", str(samples)]).photos == ""  # orenet: the patches only
    assert train.parse_args(["--data", str(samples), *lite0, "--photos", ""]).photos == ""
    assert train.parse_args(["--data", str(tmp_path), *lite0]).photos == ""  # no photos.txt: the patches only


@pytest.mark.slow
def test_report_builds_the_pdf_from_a_run(run, samples, tmp_path, bench_record):
    """make docs-minerals on a tiny run: every page of the PDF (the summary quotes a benchmark record), the box
    finder's IoU measured on demo photos."""
    import shutil

    from minerals import evaluate, report

    runs = tmp_path / "runs"
    shutil.copytree(samples, runs / "samples")
    shutil.copytree(run, runs / "scratch")
    evaluate.main(["--checkpoint", str(runs / "scratch" / "best.pt"), "--data", str(runs / "samples"),
                   "--out", str(runs / "scratch" / "eval")])
    out, pages = tmp_path / "doc" / "report.pdf", tmp_path / "pages"
    bench_record["metrics"]["transfer"]["calibration_out_of_fold"] = {  # what bench.py --folds 5 adds
        "held_out_patches": 1059, "temperature": 0.65, "ece_uncalibrated": 0.08, "ece": 0.02, "ece_cross_fitted": 0.02,
        "threshold": 0.28, "at_threshold": {"coverage": 1.0, "mineral_accuracy": 0.89},
        "at_0.5": {"coverage": 0.96, "answered_accuracy": 0.91}}
    (tmp_path / "bench.json").write_text(json.dumps(bench_record))
    lines = report.summary_lines(runs, [runs / "scratch"], report.read_csv(runs / "samples" / "index.csv"),
                                 tmp_path / "bench.json")
    assert any("scratch: fold 0 accuracy 0.8" in s and "NOT met" in s for s in lines)
    assert "T 0.650, ECE 0.08 -> 0.02" in " ".join(" ".join(lines).split())
    report.main(["--runs", str(runs), "--out", str(out), "--pages-png", str(pages),
                 "--bench-json", str(tmp_path / "bench.json")])
    assert out.read_bytes().startswith(b"%PDF") and not list(out.parent.glob("*.tmp.pdf"))
    assert len(list(pages.glob("page_*.png"))) >= 10  # summary, architecture, sampling, training, inference, results
    iou = report.demo_box_iou(seed=0)  # the figure page 2 quotes
    assert float(iou.split()[0]) > 0.7 and "84 photos" in iou


def test_missing_samples_or_a_lost_patch_is_one_error_line(samples, tmp_path):
    """No index.csv, or a patch index.csv lists but that is gone: FileNotFoundError / ImageReadError tracebacks."""
    with pytest.raises(SystemExit, match=r"--data .*index.csv not found"):
        train.main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "a"), "--threads", "1"])
    shutil.copytree(samples, tmp_path / "s")
    lost = next((tmp_path / "s" / "patches" / "quartz").glob("*.jpg"))
    lost.unlink()
    with pytest.raises(SystemExit, match=f"{lost.name}: file not found"):
        train.main(["--data", str(tmp_path / "s"), "--out", str(tmp_path / "b"), "--threads", "1"])


def test_every_training_option_has_a_help_text():
    from common.config import field_comments

    assert [name for name, text in field_comments(train.Config).items() if not text] == []  # --val-fold had none


@pytest.mark.slow
def test_a_run_on_every_photo_takes_the_held_out_calibration(run, samples, tmp_path, capsys):
    """--val-fold -1: every patch trains, the last epoch is kept (best.pt = last.pt), and the checkpoint's temperature
    and threshold are the ones fitted on a validation-fold run's held-out patches (its calibration.json), which
    predict.py then uses; a calibration of another backbone or size, or none at all, stops the run first."""
    from minerals import predict
    from minerals.decision import calibrate

    cal = json.loads((run / "calibration.json").read_text())
    last = torch.load(run / "last.pt", weights_only=True)["history"][-1]
    assert (cal["temperature"], cal["threshold"], cal["epochs"]) == (last["temperature"], last["threshold"], 2)
    assert cal["held_out_patches"] == sum(r["split"] == "val" for r in csv.DictReader(open(run / "split.csv")))
    args = ["--data", str(samples), "--epochs", "2", "--img-size", "48", "--batch-size", "16", "--width", "0.5",
            "--threads", "1", "--no-export", "--val-fold", "-1"]
    out = tmp_path / "all"
    result = train.main(args + ["--out", str(out), "--calibration", str(run / "calibration.json")])
    rows = list(csv.DictReader(open(out / "split.csv")))
    assert rows and all(r["split"] == "train" for r in rows)  # every patch trained, none held out
    best, final = (torch.load(out / n, weights_only=True) for n in ("best.pt", "last.pt"))
    assert best["epoch"] == final["epoch"] == 2 and result["held_out_patches"] == 0
    assert all(torch.equal(best["model"][k], final["model"][k]) for k in best["model"])
    assert (best["temperature"], best["threshold"]) == (cal["temperature"], cal["threshold"])
    model, meta = predict.load_classifier(out / "best.pt", torch.device("cpu"), jit=False)
    files = sorted((samples / "patches").rglob("*.jpg"))[:4]
    raw = np.stack([p for _, p, _ in predict.predict_probs(model, files, 48, torch.device("cpu"))])
    scaled = np.stack([p for _, p, _ in predict.predict_probs(model, files, 48, torch.device("cpu"),
                                                              temperature=meta["temperature"])])
    np.testing.assert_allclose(scaled, calibrate(raw, cal["temperature"]), atol=1e-5)
    capsys.readouterr()
    for bad, why in [({**cal, "backbone": "efficientnet_lite0"}, "was fitted for"), ({**cal, "temperature": 0}, "> 0"),
                     ({"threshold": 0.5}, "not a calibration.json")]:
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(SystemExit, match=why):
            train.main(args + ["--out", str(tmp_path / "bad"), "--calibration", str(tmp_path / "bad.json")])
        assert not (tmp_path / "bad" / "best.pt").exists()  # stopped before training
    with pytest.raises(SystemExit, match="no cross-validated calibration of efficientnet_lite2"):
        train.main(args + ["--out", str(tmp_path / "bad"), "--backbone", "efficientnet_lite2"])
