import json
import subprocess
import sys
from pathlib import Path

import torch

from minerals.data import CLASSES, MINERALS

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
    assert all(r["result"] != "unknown" for r in res.values()) or threshold > 0


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
    for bad in ("broken.jpg", "empty.png"):
        assert res[bad]["result"] == "error" and res[bad]["confidence"] is None and res[bad]["error"]
    thr = torch.load(run / "best.pt", map_location="cpu", weights_only=True)["threshold"]
    assert f"threshold {thr:.2f}" in err  # the checkpoint's threshold by default
    good = [r for r in res.values() if r["result"] != "error"]
    assert len(good) == len(res) - 2
    assert all((r["result"] == "unknown") == (r["confidence"] < thr) for r in good)


def test_evaluate_on_run(run, samples, tmp_path):
    from minerals import evaluate

    report = evaluate.main(["--checkpoint", str(run / "best.pt"), "--data", str(samples), "--out", str(tmp_path)])
    assert 0 <= report["closed_set"]["accuracy"] <= 1
    for name in ("metrics.json", "confusion_matrix.png", "confusion_matrix_open_set.png", "threshold_curve.png"):
        assert (tmp_path / name).exists()


def test_ema_mix_tta_checkpoint_and_resume(samples, tmp_path):
    """With a weight average the checkpoint's "model" is the average (what predict uses) and --resume goes on from
    the trained weights and the averager's state."""
    from minerals import predict as predict_module, train

    args = ["--data", str(samples), "--out", str(tmp_path), "--epochs", "2", "--img-size", "32", "--width", "0.5",
            "--batch-size", "16", "--threads", "1", "--no-export", "--ema-decay", "0.9", "--mix", "1.0", "--tta"]
    train.main(args + ["--max-steps", "2"])
    ck = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    assert {"model", "train_model", "ema"} <= set(ck) and ck["config"]["tta"]
    assert not torch.equal(ck["model"]["fc.weight"], ck["train_model"]["fc.weight"])
    assert torch.equal(ck["model"]["fc.weight"], ck["ema"]["module.fc.weight"])
    train.main(args + ["--resume", str(tmp_path / "last.pt")])
    assert [h["epoch"] for h in torch.load(tmp_path / "last.pt", weights_only=True)["history"]] == [1, 2]
    model, meta = predict_module.load_classifier(tmp_path / "best.pt", torch.device("cpu"))
    assert meta["tta"] and type(model).__name__ == "FlipTTA"
