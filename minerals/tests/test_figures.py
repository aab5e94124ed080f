"""bench.py's record (the shape of benchmarks/minerals.json, built from made-up figures, never read from the
committed file) and the README figures."""
import shutil

import pytest

from minerals import bench, evaluate, figures

SHAPE = {"task", "what", "command", "config", "data", "machine", "load", "date_utc", "metrics", "timings", "note"}


def test_bench_writes_one_record_of_the_current_default(bench_record, tmp_path):
    rec = bench_record
    assert set(rec) == SHAPE and rec["config"]["folds"] == [0, 1, 2, 3, 4]
    m = rec["metrics"]["scratch"]
    assert set(m) == {"fold0", "per_fold", "mean", "target"} and list(m["per_fold"]) == ["0", "1", "2", "3", "4"]
    assert m["mean"] == {"accuracy": 0.82, "macro_f1": 0.72} and m["target"] == bench.TARGETS["scratch"]
    figures.folds_figure(rec, tmp_path / "bench_folds.png")
    assert 0 < (tmp_path / "bench_folds.png").stat().st_size < 150_000
    one = {**rec, "metrics": {"transfer": rec["metrics"]["transfer"]}}  # bench.py --models transfer
    figures.folds_figure(one, tmp_path / "one_model.png")
    assert 0 < (tmp_path / "one_model.png").stat().st_size < 150_000


@pytest.mark.slow
def test_figures_of_a_demo_run_and_of_bench_runs(run, samples, photos, tmp_path):
    """make figures-minerals on a tiny run: small PNGs; no picture of photos that are not demo data."""
    demo = tmp_path / "demo"
    shutil.copytree(samples, demo / "samples")
    shutil.copytree(run, demo / "scratch")
    evaluate.main(["--checkpoint", str(demo / "scratch" / "best.pt"), "--data", str(demo / "samples"),
                   "--threads", "1"])
    figures.main(["--demo", str(demo), "--photos", str(photos), "--bench", str(demo), "--out", str(tmp_path / "a")])
    names = {"demo_photos.png", "demo_predictions.png", "demo_curves.png", "demo_threshold.png",
             "bench_curves.png", "bench_confusion.png", "bench_threshold.png", "bench_reliability.png"}
    assert {p.name for p in (tmp_path / "a").glob("*.png")} == names
    assert all(p.stat().st_size < 150_000 for p in (tmp_path / "a").glob("*.png"))
    real = tmp_path / "real"  # the same photos without the demo marker stand for real ones
    shutil.copytree(photos, real, ignore=shutil.ignore_patterns("DEMO_DATA.txt"))
    figures.main(["--demo", str(demo), "--photos", str(real), "--out", str(tmp_path / "b")])
    assert {p.name for p in (tmp_path / "b").glob("*.png")} == {"demo_curves.png", "demo_threshold.png"}
