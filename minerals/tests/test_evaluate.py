import json

import numpy as np
import pytest

from minerals.config import CLASSES, MINERALS
from minerals.decision import choose_threshold, decide, threshold_curve
from minerals.evaluate import misclassified, summarise


def onehot(i, p=0.9):
    v = np.full(len(CLASSES), (1 - p) / (len(CLASSES) - 1))
    v[i] = p
    return v


def test_hand_made_confusion_case():
    # 4 biotite: 3 right, 1 taken for pyrite; 2 pyrite right; 2 quartz: 1 right (unsure: 0.4), 1 as biotite
    b, py, q, neg = (CLASSES.index(c) for c in ("biotite", "pyrite", "quartz", "negative"))
    probs = np.stack([onehot(b), onehot(b), onehot(b), onehot(py), onehot(py), onehot(py), onehot(q, 0.4),
                      onehot(b), onehot(neg), onehot(neg)])
    labels = np.array([b, b, b, b, py, py, q, q, neg, neg])
    r = summarise(probs, labels, threshold=0.5)
    c = r["closed_set"]
    assert c["accuracy"] == pytest.approx(6 / 8)
    cm = np.array(c["confusion_matrix"])
    assert cm[MINERALS.index("biotite"), MINERALS.index("pyrite")] == 1
    assert cm[MINERALS.index("quartz"), MINERALS.index("biotite")] == 1
    assert c["per_class"]["biotite"]["precision"] == pytest.approx(3 / 4)
    assert c["per_class"]["biotite"]["recall"] == pytest.approx(3 / 4)
    assert c["per_class"]["pyrite"]["precision"] == pytest.approx(2 / 3)
    assert c["per_class"]["quartz"]["recall"] == pytest.approx(1 / 2)
    f1 = {"biotite": 0.75, "pyrite": 0.8, "quartz": 2 / 3}
    assert c["macro_f1"] == pytest.approx(sum(f1.values()) / 7)  # 4 absent classes count as 0
    # with the threshold 0.5: the unsure quartz and both negatives are "unknown"
    assert r["coverage_at_threshold"] == pytest.approx(7 / 8)
    assert r["open_set"]["accuracy"] == pytest.approx((3 + 2 + 0 + 0 + 2) / 10)
    # mineral patches right and answered (the unsure quartz counts as wrong), and right among the 7 answered
    assert r["mineral_accuracy_at_threshold"] == pytest.approx(5 / 8)
    assert r["answered_accuracy_at_threshold"] == pytest.approx(5 / 7)


def test_threshold_rule_and_curve():
    probs = np.stack([onehot(0, 0.95), onehot(1, 0.6), onehot(2, 0.3), onehot(7, 0.9)])
    labels = np.array([0, 1, 7, 7])  # the third is a negative patch that looks a little like chrysocolla
    conf, res = decide(probs, 0.5)
    assert res == ["biotite", "bornite", "unknown", "unknown"]
    # rejecting the third needs t > 0.3, keeping the second t <= 0.6: the best grid values are 0.31-0.60, and
    # the choice is their middle
    t = choose_threshold(probs, labels)
    assert t == pytest.approx(0.45)
    curve = threshold_curve(probs, labels)
    cov = curve["coverage"]
    assert cov[0] == 1.0 and all(a >= b for a, b in zip(cov, cov[1:]))


def test_misclassified_lists_closed_set_mistakes_most_confident_first():
    b, py, q, neg = (CLASSES.index(c) for c in ("biotite", "pyrite", "quartz", "negative"))
    probs = np.stack([onehot(b), onehot(py, 0.6), onehot(b, 0.8), onehot(q, 0.4), onehot(py), onehot(neg)])
    labels = np.array([b, b, q, q, neg, neg])  # a negative taken for pyrite is no closed-set mistake
    rows = misclassified(["a", "b", "c", "d", "e", "f"], probs, labels)
    assert [(r["file"], r["label"], r["predicted"]) for r in rows] == [("c", "quartz", "biotite"),
                                                                       ("b", "biotite", "pyrite")]
    assert rows[0]["confidence"] == pytest.approx(0.8) and rows[0]["p_label"] == pytest.approx(0.2 / 7, abs=1e-4)
    # the most likely *mineral* counts, even when "negative" is more likely still
    rows = misclassified(["g"], np.stack([0.5 * onehot(neg) + 0.5 * onehot(q, 0.3)]), np.array([b]))
    assert rows[0]["predicted"] == "quartz"


def test_threshold_choice_takes_the_middle_of_the_widest_best_range():
    grid = np.round(np.arange(0.0, 1.0, 0.1), 1)
    # one mineral at 0.25, one negative whose best mineral is at 0.15: any t in (0.15, 0.25] gets both right
    probs = np.stack([onehot(0, 0.25), onehot(7, 0.85 - 0.15)])
    probs[1, 0] = 0.15
    labels = np.array([0, 7])
    assert choose_threshold(probs, labels, grid) == pytest.approx(0.2)  # the only best value
    # a sure-ish mineral (0.15) and a negative that looks like bornite (0.6): no threshold gets both right; the
    # best score, 1/2, holds on 0.0-0.1 (the mineral kept) and on 0.7-0.9 (the negative rejected): the longer
    # range wins, and its middle is 0.8
    probs = np.zeros((2, len(CLASSES)))
    probs[0, [0, 7]] = 0.15, 0.85
    probs[1, [1, 7]] = 0.6, 0.4
    assert choose_threshold(probs, np.array([0, 7]), grid) == pytest.approx(0.8)
    # equally long ranges: the lower one
    probs[1, [1, 7]] = 0.75, 0.25  # the negative is rejected on 0.8-0.9 only, like the mineral kept on 0.0-0.1
    assert choose_threshold(probs, np.array([0, 7]), grid) == pytest.approx(0.0)


def test_summarise_negatives_only_is_a_rejection_test():
    """A folder of foreign patches alone (``negative/``): no closed-set metrics, open-set accuracy = share rejected."""
    probs = np.stack([onehot(7, 0.9), onehot(0, 0.6), onehot(7, 0.5)])
    r = summarise(probs, np.array([7, 7, 7]), threshold=0.3)
    assert r["closed_set"] is None and r["n_mineral_patches"] == 0
    assert r["open_set"]["accuracy"] == pytest.approx(2 / 3)  # the one at 0.6 is taken for biotite


def test_report_line_shows_undefined_metrics_as_na(tmp_path):
    """metrics.json holds null for an undefined figure (it held NaN, which is not JSON); report.py's summary line
    formatted it with :.3f, which raises on None: it shows n/a."""
    from common.io import write_json
    from minerals.report import metrics_line
    probs = np.stack([onehot(7, 0.9), onehot(0, 0.6)])
    path = write_json(tmp_path / "metrics.json", summarise(probs, np.array([7, 7]), threshold=0.3))
    m = json.loads(path.read_text())
    assert m["coverage_at_threshold"] is None  # no mineral patch: NaN in memory
    assert "no mineral patch; threshold 0.30: open-set accuracy 0.500, coverage n/a;" in metrics_line(m)
    m["closed_set"] = {"accuracy": None, "macro_f1": 0.25}
    assert "accuracy n/a, macro-F1 0.250;" in metrics_line(m)


def test_photos_option_scores_the_source_photos_of_the_mineral_patches(samples, photos, tmp_path):
    """--photos: each mineral patch is replaced by its whole source photo, negatives keep their patch; a run trained
    on every photo has no validation patches to score, and says so."""
    from minerals.evaluate import labelled_patches

    patches = labelled_patches(samples)
    whole = labelled_patches(samples, photos=photos)
    assert [label for _, label in whole] == [label for _, label in patches]
    for (p, label), (w, _) in zip(patches, whole):
        if label == "negative":
            assert w == p
        else:
            assert w.parent.parent == photos and w.exists() and w.parent.name == label
    split = tmp_path / "split.csv"  # what train.py --val-fold -1 writes: every patch on the training side
    split.write_text("patch,label,split\n" + "".join(f"{p.parent.name}/{p.name},{label},train\n"
                                                      for p, label in patches))
    with pytest.raises(ValueError, match="trained on every photo"):
        labelled_patches(samples, split, "val")
