"""Temperature scaling of the confidences (minerals/decision.py): the fit finds the temperature that made the
labels, calibrated confidences match the share of right answers, the answers themselves never change."""
import numpy as np
import pytest

from minerals.config import CLASSES, MINERALS
from minerals.decision import calibrate, expected_calibration_error, fit_temperature, mineral_confidence, reliability


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sampled(temperature: float, n: int = 4000, seed: int = 0):
    """Probabilities whose labels are drawn from softmax(logits), reported at softmax(logits * temperature):
    the temperature that calibrates them back is ``temperature``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, (n, len(CLASSES)))
    truth = softmax(logits)
    labels = np.array([rng.choice(len(CLASSES), p=p) for p in truth])
    return softmax(logits * temperature), labels


def test_fit_temperature_recovers_the_distortion():
    for t in (0.5, 1.0, 2.5):  # under-, well-, over-confident
        probs, labels = sampled(t)
        assert abs(fit_temperature(probs, labels) / t - 1) < 0.1


def test_calibration_lowers_the_calibration_error_and_keeps_the_answers():
    probs, labels = sampled(3.0)  # overconfident, like a network trained to a low loss
    cal = calibrate(probs, fit_temperature(probs, labels))
    assert expected_calibration_error(cal, labels) < 0.04 < expected_calibration_error(probs, labels)
    assert (cal.argmax(1) == probs.argmax(1)).all() and np.allclose(cal.sum(1), 1)
    assert (mineral_confidence(cal)[1] == mineral_confidence(probs)[1]).all()


def test_calibration_error_and_reliability_of_known_answers():
    probs = np.zeros((4, len(CLASSES)))
    probs[:, 0], probs[:, -1] = 0.75, 0.25  # confidence 0.75 for biotite
    labels = np.array([0, 0, 0, len(MINERALS)])  # 3 right, 1 negative answered biotite: 75 % right
    assert expected_calibration_error(probs, labels) == 0.0
    rel = reliability(probs, labels)
    assert rel["confidence"] == [0.75] and rel["accuracy"] == [0.75] and rel["count"] == [4]
    assert fit_temperature(probs[:0], labels[:0]) == 1.0 and np.isnan(expected_calibration_error(probs[:0], labels[:0]))


@pytest.mark.slow
def test_bench_fits_the_calibration_on_the_pooled_out_of_fold_predictions(run, samples, tmp_path):
    """bench.oof_calibration: every fold run's last.pt scores its own validation patches without its temperature;
    one temperature and threshold are fitted on all of them together and written where train.py --calibration
    reads them (two fold runs here, both copies of the tiny run)."""
    import json
    import shutil

    import torch

    from minerals import bench, train
    from minerals.checkpoint import held_out_calibration
    from minerals.config import CLASSES
    from minerals.decision import fit_temperature
    from minerals.evaluate import labelled_patches
    from minerals.predict import load_classifier, predict_probs

    for k in (0, 1):
        shutil.copytree(run, bench.run_dir(tmp_path, "scratch", k))
    rec = bench.oof_calibration("scratch", tmp_path, samples, 2)
    pairs = labelled_patches(samples, run / "split.csv", "val")
    model, meta = load_classifier(run / "last.pt", torch.device("cpu"))
    cpu = torch.device("cpu")
    raw = np.stack([p for _, p, _ in predict_probs(model, [f for f, _ in pairs], meta["img_size"], cpu)])
    labels = np.array([CLASSES.index(label) for _, label in pairs])
    assert rec["held_out_patches"] == 2 * len(pairs)
    pooled = fit_temperature(np.concatenate([raw, raw]), np.concatenate([labels, labels]))
    assert rec["temperature"] == pytest.approx(pooled)
    t = round(meta["temperature"], 4)
    assert rec["per_fold_last_epoch_temperature"] == {"0": t, "1": t}
    assert 0 <= rec["threshold"] <= 1 and 0 <= rec["ece"] <= 1 and 0 <= rec["at_0.5"]["coverage"] <= 1
    saved = json.loads((tmp_path / "scratch_calibration.json").read_text())
    assert saved == json.loads(json.dumps(rec))
    assert sum(rec["reliability"]["count"]) == rec["held_out_patches"]  # the pooled reliability diagram's bins
    from minerals.figures import oof_reliability_figure
    oof_reliability_figure({"metrics": {"scratch": {"calibration_out_of_fold": rec}}}, tmp_path / "reliability.png")
    assert (tmp_path / "reliability.png").stat().st_size > 1000
    cfg = train.parse_args(["--val-fold", "-1", "--calibration", str(tmp_path / "scratch_calibration.json"),
                            "--img-size", str(meta["img_size"]), "--epochs", str(rec["epochs"])])
    taken = held_out_calibration(cfg)
    assert (taken["temperature"], taken["threshold"]) == (rec["temperature"], rec["threshold"])


def test_answered_at_counts_mineral_patches_only():
    from minerals.decision import answered_at

    # 4 mineral patches (labels 0, 1, 2, 3) and one negative (7): confidences 0.9 right, 0.8 wrong, 0.4 right
    # (unanswered at 0.5), 0.6 right; the negative's confidence never counts
    probs = np.zeros((5, 8))
    probs[0, 0], probs[1, 2], probs[2, 2], probs[3, 3], probs[4, 1] = 0.9, 0.8, 0.4, 0.6, 0.95
    labels = np.array([0, 1, 2, 3, 7])
    at = answered_at(probs, labels, 0.5)
    assert at == {"coverage": 0.75, "mineral_accuracy": 0.5, "answered_accuracy": 2 / 3}
    none = answered_at(probs, labels, 0.99)
    assert none["coverage"] == 0.0 and none["mineral_accuracy"] == 0.0 and np.isnan(none["answered_accuracy"])
    assert all(np.isnan(v) for v in answered_at(probs[4:], labels[4:], 0.5).values())  # negatives only


def test_bench_reuses_a_run_whose_photos_folder_is_named_by_another_path(tmp_path, monkeypatch):
    """bench.photos_folder: a relative and an absolute path of one photos folder are the same setting (a finished
    run is reused); another folder, or none, is not."""
    from minerals import bench

    (tmp_path / "photos").mkdir()
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    assert bench.photos_folder("../photos") == bench.photos_folder(str(tmp_path / "photos"))
    assert bench.photos_folder("../photos") != bench.photos_folder(str(tmp_path / "other"))
    assert bench.photos_folder("../photos") != bench.photos_folder("")
    assert bench.photos_folder("") == ""


@pytest.mark.parametrize("files, extracts", [((), True), (("index.csv",), True), (("index.csv", "photos.txt"), False)])
def test_bench_extracts_again_a_samples_folder_without_its_photos_record(tmp_path, monkeypatch, files, extracts):
    """bench.py extracts the samples when there are none, and again when the folder predates photos.txt (else
    --photos auto would silently train the transfer model on the patches only); a complete folder is kept."""
    from minerals import bench

    data, samples = tmp_path / "photos", tmp_path / "out" / "samples"
    (data / "quartz").mkdir(parents=True)
    samples.mkdir(parents=True)
    for name in files:
        (samples / name).write_text("x\n")
    calls = []

    def stop(*args, **kwargs):
        raise RuntimeError("stop before training")

    monkeypatch.setattr(bench, "extract", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(bench, "train_run", stop)
    with pytest.raises(RuntimeError, match="stop before training"):
        bench.main(["--data", str(data), "--out", str(tmp_path / "out")])
    assert bool(calls) == extracts
