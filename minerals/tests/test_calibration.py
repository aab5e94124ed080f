"""Temperature scaling of the confidences (minerals/decision.py): the fit finds the temperature that made the
labels, calibrated confidences match the share of right answers, the answers themselves never change."""
import numpy as np

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
