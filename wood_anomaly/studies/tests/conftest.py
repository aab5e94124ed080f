"""The package's session fixtures (demo photos, a trained tiny model, its predictions), for the study's test."""
from wood_anomaly.tests.conftest import demo_dir, predict_dir, predicted, trained_run

__all__ = ["demo_dir", "predict_dir", "predicted", "trained_run"]
