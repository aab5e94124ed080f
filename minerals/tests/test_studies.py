"""The study tools of minerals/studies (not part of the product)."""
import pytest

from minerals import train
from minerals.studies.learning_curve import subsample_rows


@pytest.mark.filterwarnings("ignore:The least populated class:UserWarning")  # 10 folds of a few demo photos
def test_learning_curve_share_keeps_whole_photos_of_every_class(samples):
    """A share of 0.5 keeps about half of the training photos, every patch of a kept photo and every class, the
    same half every time."""
    cfg = train.parse_args(["--data", str(samples), "--img-size", "32"])
    full = train.make_loaders(cfg)[0]
    half = subsample_rows(full, 0.5, seed=0)
    groups = {r["group"] for r in half}
    assert 0.3 < len(groups) / len({r["group"] for r in full}) < 0.7
    assert [r for r in full if r["group"] in groups] == half  # whole photos: every patch of a kept photo
    assert {r["label"] for r in half} == {r["label"] for r in full}
    assert subsample_rows(full, 0.5, seed=0) == half and subsample_rows(full, 1.0) is full
