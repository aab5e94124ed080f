"""evaluate.py on hand-made maps, masks and labels: perfect, inverted and uninformative predictions."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from common.io import save_image
from wood_anomaly import evaluate


def make_run(root, maps, masks, labels):
    """A predict.py-like folder (predictions.csv, <stem>/anomaly_map.npy + preds.png) and a data folder."""
    pred, data = root / "pred", root / "data"
    (data / "masks" / "consensus").mkdir(parents=True)
    rows = []
    for i, (m, t) in enumerate(zip(maps, masks)):
        stem = f"photo {i}"
        (pred / stem).mkdir(parents=True)
        np.save(pred / stem / "anomaly_map.npy", m.astype(np.float16))
        save_image(pred / stem / "preds.png", (m > 0.5).astype(np.uint8) * 255)
        save_image(data / "masks" / "consensus" / f"{stem}.png", t.astype(np.uint8) * 255)
        rows.append({"image": f"{stem}.jpg", "score": float(m.max()), "label": "anomalous" if m.max() > 0.5
                     else "normal", "status": "ok"})
    rows.append({"image": "bad.jpg", "score": "", "label": "error", "status": "bad.jpg: corrupt"})
    with open(pred / "predictions.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(data / "image_labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["stem", "label"])
        w.writerows([(f"photo {i}", lab) for i, lab in enumerate(labels)])
    return pred, data


def masks_and_maps():
    masks = [np.zeros((40, 50), bool) for _ in range(3)]
    masks[0][5:15, 5:20] = True
    masks[1][30:38, 30:45] = True  # photo 2 is clean
    return masks, [t.astype(np.float32) * 0.9 + 0.05 for t in masks]


def test_perfect_maps_score_one(tmp_path):
    masks, maps = masks_and_maps()
    pred, data = make_run(tmp_path, maps, masks, ["anomalous", "anomalous", "normal"])
    r = evaluate.evaluate(pred, data / "masks" / "consensus", data / "image_labels.csv")
    assert r["photos"] == 3 and r["photos_with_masks"] == 3
    for key in ("pixel_auroc", "pixel_ap", "aupro_0.3", "best_f1", "best_iou", "mask_f1", "mask_iou",
                "image_auroc", "label_accuracy"):
        assert r[key] == pytest.approx(1.0), key


def test_inverted_maps_score_zero_and_noise_near_chance(tmp_path):
    masks, maps = masks_and_maps()
    pred, data = make_run(tmp_path / "inv", [1 - m for m in maps], masks, ["1", "1", "0"])
    r = evaluate.evaluate(pred, data / "masks" / "consensus", data / "image_labels.csv")
    assert r["pixel_auroc"] == pytest.approx(0.0) and r["aupro_0.3"] == pytest.approx(0.0)
    assert r["mask_iou"] == pytest.approx(0.0)
    rng = np.random.default_rng(0)
    pred, data = make_run(tmp_path / "noise", [rng.random(m.shape) for m in maps], masks, ["1", "1", "0"])
    r = evaluate.evaluate(pred, data / "masks" / "consensus", None)
    assert 0.4 < r["pixel_auroc"] < 0.6 and r["pixel_ap"] < 0.2 and "image_auroc" not in r


def test_cli_writes_json(tmp_path):
    masks, maps = masks_and_maps()
    pred, data = make_run(tmp_path, maps, masks, ["1", "1", "0"])
    printed = evaluate.main(["--pred", str(pred), "--data", str(data), "--json", str(tmp_path / "m.json")])
    written = json.loads((tmp_path / "m.json").read_text())
    assert written == printed and written["photos"] == 3 and written["photos_with_masks"] == 3
    assert written["photos_with_labels"] == 3 and "skipped" not in written
    assert written["photos_not_predicted"] == 1  # bad.jpg's error row: said, not silently dropped
    for key in ("pixel_auroc", "pixel_ap", "aupro_0.3", "best_f1", "mask_f1", "image_auroc", "label_accuracy"):
        assert written[key] == pytest.approx(1.0), key
    with pytest.raises(SystemExit) as exc:  # an unwritable --json is one line, not an IsADirectoryError traceback
        evaluate.main(["--pred", str(pred), "--data", str(data), "--json", str(tmp_path)])
    assert str(exc.value.code).startswith(f"--json {tmp_path}: cannot write the metrics")


def test_cli_json_holds_null_for_an_undefined_metric(tmp_path, capsys, strict_json):
    """Every photo labelled anomalous: the image AUROC is undefined (NaN), which the printed and the written JSON
    held as a bare NaN, not JSON (JSON.parse, jq reject the whole file); both hold null."""
    masks, maps = masks_and_maps()
    pred, data = make_run(tmp_path, maps, masks, ["1", "1", "1"])
    evaluate.main(["--pred", str(pred), "--data", str(data), "--json", str(tmp_path / "m.json")])
    printed = strict_json(capsys.readouterr().out)
    written = strict_json((tmp_path / "m.json").read_text())
    assert printed == written and written["image_auroc"] is None and written["pixel_auroc"] == pytest.approx(1.0)


def test_unreadable_map_is_named_and_the_rest_scored(tmp_path, capsys):
    masks, maps = masks_and_maps()
    pred, data = make_run(tmp_path, maps, masks, ["1", "1", "0"])
    (pred / "photo 1" / "anomaly_map.npy").write_bytes(b"not numpy")
    np.save(pred / "photo 2" / "anomaly_map.npy", np.zeros((10, 10), np.float16))  # wrong size
    r = evaluate.evaluate(pred, data / "masks" / "consensus", None)
    assert r["photos_with_masks"] == 1 and r["pixel_auroc"] == pytest.approx(1.0)
    assert [s["image"] for s in r["skipped"]] == ["photo 1.jpg", "photo 2.jpg"]
    assert "anomaly_map.npy" in r["skipped"][0]["reason"] and "differ in size" in r["skipped"][1]["reason"]
    assert "photo 1.jpg" in capsys.readouterr().err


def test_label_csv_values_are_read_or_refused(tmp_path):
    """'1.0', 'Anomalous' or a spreadsheet's byte-order mark were silently read as normal (or as a missing
    column); a label that is neither anomalous nor normal is an error naming the file and the line."""
    masks, maps = masks_and_maps()
    pred, data = make_run(tmp_path, maps, masks, ["1", "1", "0"])
    variants = {"floats": ["1.0", "1.0", "0.0"], "words": [" Anomalous", "ANOMALOUS", "Normal "],
                "bools": ["True", "true", "False"]}
    for name, labels in variants.items():
        (tmp_path / f"{name}.csv").write_text("\ufeffstem,label\n" + "".join(
            f"photo {i},{lab}\n" for i, lab in enumerate(labels)), encoding="utf-8")
        r = evaluate.evaluate(pred, None, tmp_path / f"{name}.csv")
        assert r["image_auroc"] == pytest.approx(1.0) and r["label_accuracy"] == pytest.approx(1.0), name
    (tmp_path / "bad.csv").write_text("stem,label\nphoto 0,1\nphoto 1,yes\n")
    with pytest.raises(ValueError, match=r"bad\.csv:3: label 'yes' of 'photo 1'"):
        evaluate.evaluate(pred, None, tmp_path / "bad.csv")
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00bin")
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--pred", str(pred), "--data", str(data), "--labels", str(tmp_path / "binary.csv")])
    assert "binary.csv: not a UTF-8 text CSV" in str(exc.value.code)
