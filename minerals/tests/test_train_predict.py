import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from minerals import train
from minerals.data import CLASSES, MINERALS, to_tensor, train_transform

ROOT = Path(__file__).resolve().parents[2]


def test_training_writes_checkpoints_with_threshold(run):
    for name in ("best.pt", "last.pt", "config.json", "log.csv", "curves.png", "model.onnx", "model_summary.txt",
                 "split.csv", "val_predictions.csv", "result.json"):
        assert (run / name).exists(), name
    ck = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    assert ck["classes"] == CLASSES and 0.0 <= ck["threshold"] < 1.0
    assert {"model", "optimizer", "epoch", "best_metric", "config"} <= set(ck)
    import onnx

    onnx.checker.check_model(onnx.load(str(run / "model.onnx")))


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


def test_predict_threshold_rule(run, samples, capsys):
    from minerals import predict as predict_module

    patches = sorted((samples / "patches" / "pyrite").glob("*.jpg"))[:3]
    for threshold in (0.0, 0.5, 0.99):
        rc = predict_module.main([*map(str, patches), "--checkpoint", str(run / "best.pt"), "--threshold", str(threshold)])
        res = json.loads(capsys.readouterr().out)
        assert rc == 0 and list(res) == [p.name for p in patches]
        for r in res.values():
            assert set(r) == {"confidence", "result"} and isinstance(r["confidence"], float)
            assert r["result"] in MINERALS + ["unknown"]
            assert (r["result"] == "unknown") == (r["confidence"] < threshold)  # below it: "unknown"
            assert threshold > 0 or r["result"] != "unknown"  # a zero threshold rejects nothing


def test_predict_cli_default_threshold_and_corrupt_file(run, samples, tmp_path):
    folder = tmp_path / "batch"
    folder.mkdir()
    for p in sorted((samples / "patches").rglob("*.jpg"))[::6]:
        (folder / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / "empty.png").write_bytes(b"")
    rc, out, err = predict([str(folder), "--checkpoint", str(run / "best.pt"), "--threads", "1"], cwd=tmp_path)  # from any folder
    res = json.loads(out)  # stdout holds the JSON and nothing else
    assert rc == 1 and "broken.jpg" in err and "empty.png" in err
    assert len(res) == len(list(folder.iterdir()))
    assert all(set(r) == {"confidence", "result"} and isinstance(r["confidence"], float) for r in res.values())
    for bad in ("broken.jpg", "empty.png"):  # named on stderr, and in the brief's format in the JSON
        assert res[bad] == {"confidence": 0.0, "result": "unknown"} and f"{bad}:" in err
    thr = torch.load(run / "best.pt", map_location="cpu", weights_only=True)["threshold"]
    assert f"threshold {thr:.2f}" in err  # the checkpoint's threshold by default
    assert all((r["result"] == "unknown") == (r["confidence"] < thr) for r in res.values())


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


def test_quarter_turns_add_the_four_transposed_views():
    """A bright 3x3 block off the diagonal of a square image lands in its 4 flip positions, and with quarter turns
    also in their 4 transposes: all 8 dihedral views (scale 1: the crop keeps the whole image)."""
    img = np.zeros((32, 32, 3), np.uint8)
    img[2:5, 8:11] = 255  # centre (row 3, column 9)
    flips = {(3, 9), (3, 22), (28, 9), (28, 22)}
    transposes = {(c, r) for r, c in flips}
    for turns, expected in ((False, flips), (True, flips | transposes)):
        torch.manual_seed(0)
        transform = train_transform(32, min_scale=1.0, quarter_turns=turns)
        centres = set()
        for _ in range(100):
            out = transform(to_tensor(img))
            assert out.shape == (3, 32, 32) and out.dtype == torch.float32
            rows, cols = np.nonzero(out.mean(0).numpy() > 0.5 * float(out.max()))
            if len(rows) == 9:  # the block was not (partly) erased
                centres.add((int(rows.mean()), int(cols.mean())))
        assert centres == expected, (turns, centres)


def test_trivial_augment_adds_photometric_ops_to_the_basic_transform():
    """augment="trivial" draws one TrivialAugmentWide op per crop on top of the basic transform: with crop, flips,
    jitter and erasing neutralised, basic leaves a grey ramp unchanged and trivial changes some of the crops."""
    import pytest
    from torchvision.transforms import v2

    img = np.tile(np.linspace(40, 215, 32, dtype=np.uint8)[None, :, None], (32, 1, 3))
    x = to_tensor(img)
    changed = {}
    for augment in ("basic", "trivial"):
        torch.manual_seed(0)
        t = train_transform(32, min_scale=1.0, augment=augment)
        keep = [op for op in t.transforms if isinstance(op, (v2.RandomResizedCrop, v2.ToDtype, v2.TrivialAugmentWide))]
        t = v2.Compose(keep)
        outs = [t(x) for _ in range(40)]
        assert all(o.shape == (3, 32, 32) and o.dtype == torch.float32 for o in outs)
        changed[augment] = sum(not torch.allclose(o, x.float() / 255, atol=1 / 255) for o in outs)
    assert changed["basic"] == 0 and changed["trivial"] >= 10, changed
    with pytest.raises(ValueError, match="augment"):
        train_transform(32, augment="randaugment")


def test_ema_mix_tta_checkpoint_and_resume(samples, tmp_path):
    """With a weight average the checkpoint's "model" is the average (what predict uses) and --resume goes on from
    the trained weights and the averager's state."""
    from minerals import predict as predict_module, train

    args = ["--data", str(samples), "--out", str(tmp_path), "--epochs", "2", "--img-size", "32", "--width", "0.5",
            "--batch-size", "16", "--threads", "1", "--no-export", "--ema-decay", "0.9", "--mix", "1.0", "--tta",
            "--quarter-turns", "--augment", "trivial", "--drop-path", "0.2"]
    train.main(args + ["--max-steps", "2"])
    ck = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    assert {"model", "train_model", "ema"} <= set(ck) and ck["config"]["tta"] and ck["config"]["quarter_turns"]
    assert (ck["config"]["augment"], ck["config"]["drop_path"]) == ("trivial", 0.2)
    assert not torch.equal(ck["model"]["fc.weight"], ck["train_model"]["fc.weight"])
    assert torch.equal(ck["model"]["fc.weight"], ck["ema"]["module.fc.weight"])
    train.main(args + ["--resume", str(tmp_path / "last.pt")])
    assert [h["epoch"] for h in torch.load(tmp_path / "last.pt", weights_only=True)["history"]] == [1, 2]
    model, meta = predict_module.load_classifier(tmp_path / "best.pt", torch.device("cpu"), jit=False)
    assert meta["tta"] and type(model).__name__ == "FlipTTA"
    frozen, _ = predict_module.load_classifier(tmp_path / "best.pt", torch.device("cpu"))  # TTA inside the trace
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), model(x), atol=1e-5, rtol=1e-5)


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
    with pytest.raises(SystemExit, match="not a last.pt"):
        (tmp_path / "junk.pt").write_text("not a checkpoint")
        train.main(["--resume", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "junk")])


def test_epochs_within_budget():
    # 10 min left after 30 s spent and 30 s kept back, epochs of 10 s counted 11 s: 54 fit
    assert train.epochs_within_budget(100, 10.0, 660.0, 30.0) == 54
    assert train.epochs_within_budget(20, 10.0, 660.0, 30.0) == 20  # never more than asked
    assert train.epochs_within_budget(100, 10.0, 60.0, 50.0) == 1  # at least one epoch


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


def test_time_budget_stops_a_run_that_falls_behind(samples, tmp_path, monkeypatch):
    """An epoch slower than estimated: the run stops before the epoch that would end past the budget, keeping
    its checkpoints."""
    monkeypatch.setattr(train, "time_one_epoch", lambda *a, **k: 1e-6)  # the probe promises instant epochs
    monkeypatch.setattr(train, "epochs_within_budget", lambda epochs, *a, **k: epochs)  # all 3 planned
    result = train.main(["--data", str(samples), "--out", str(tmp_path), "--epochs", "3", "--img-size", "32",
                         "--width", "0.5", "--batch-size", "16", "--threads", "1", "--no-export",
                         "--time-budget-min", "0.5"])  # 30 s: all of it the final reserve
    assert result["epochs_planned"] == 3 and result["best_epoch"] == 1
    assert [h["epoch"] for h in torch.load(tmp_path / "last.pt", weights_only=True)["history"]] == [1]


def test_time_budget_also_stops_a_resumed_run(samples, tmp_path, monkeypatch):
    """--time-budget-min may change on --resume; it used to be ignored there (no probe, so no stop at all)."""
    args = ["--data", str(samples), "--out", str(tmp_path), "--epochs", "3", "--img-size", "32", "--width", "0.5",
            "--batch-size", "16", "--threads", "1", "--no-export"]
    train.main(args + ["--time-budget-min", "0", "--max-steps", "1"])  # stops in epoch 1 of 3
    train.main(["--resume", str(tmp_path / "last.pt"), *args, "--time-budget-min", "0.5"])  # 30 s: all reserve
    assert [h["epoch"] for h in torch.load(tmp_path / "last.pt", weights_only=True)["history"]] == [1, 2]


@pytest.mark.parametrize("option, value", [("--epochs", "-1"), ("--val-fold", "5"), ("--val-fold", "-1"),
                                           ("--n-folds", "1"), ("--batch-size", "0"), ("--threads", "0"),
                                           ("--time-budget-min", "-1"), ("--ema-decay", "1"), ("--mix", "nan"),
                                           ("--crop-scale", "0"), ("--img-size", "-8"), ("--width", "0"),
                                           ("--seed", "-1"), ("--split-seed", "-2"), ("--head-epochs", "3")])
def test_option_values_that_cannot_train_are_refused(option, value, capsys):
    with pytest.raises(SystemExit) as exc:
        train.parse_args([option, value])
    assert exc.value.code == 2 and f"{option} " in capsys.readouterr().err


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


@pytest.mark.filterwarnings("ignore:The least populated class:UserWarning")  # 10 folds of a few demo photos
def test_train_share_keeps_whole_photos_of_every_class(samples):
    """--train-share 0.5 trains on about half of the training photos, every patch of a kept photo and every class
    kept, the same half every time; validation stays whole; a share under 0.1 is refused."""
    def loaders(*flags):
        cfg = train.parse_args(["--data", str(samples), "--img-size", "32", *flags])
        train_rows, val_rows = train.make_loaders(cfg)[:2]
        return train_rows, sorted(r["patch"] for r in val_rows)

    (full, val_full), (half, val_half) = loaders(), loaders("--train-share", "0.5")
    assert val_half == val_full
    groups = {r["group"] for r in half}
    assert 0.3 < len(groups) / len({r["group"] for r in full}) < 0.7
    assert [r for r in full if r["group"] in groups] == half  # whole photos: every patch of a kept photo
    assert {r["label"] for r in half} == {r["label"] for r in full}
    assert loaders("--train-share", "0.5")[0] == half
    with pytest.raises(SystemExit):
        train.parse_args(["--data", str(samples), "--train-share", "0.05"])


def test_report_builds_the_pdf_from_a_run(run, samples, tmp_path):
    """make docs-minerals on a tiny run: every page of the PDF, the box finder's IoU measured on demo photos."""
    import shutil

    from minerals import evaluate, report

    runs = tmp_path / "runs"
    shutil.copytree(samples, runs / "samples")
    shutil.copytree(run, runs / "scratch")
    evaluate.main(["--checkpoint", str(runs / "scratch" / "best.pt"), "--data", str(runs / "samples"),
                   "--out", str(runs / "scratch" / "eval")])
    out, pages = tmp_path / "doc" / "report.pdf", tmp_path / "pages"
    report.main(["--runs", str(runs), "--out", str(out), "--pages-png", str(pages)])
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
