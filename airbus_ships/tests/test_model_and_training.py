"""The U-Net's shapes, a few training steps lowering the loss, train.py outputs and --resume."""
from __future__ import annotations

import json
import os

import keras
import numpy as np
import pandas as pd
import pytest

from airbus_ships.data import read_mask_table
from airbus_ships.inference import network_stride
from airbus_ships.losses import CUSTOM_OBJECTS, SmallShipBceDiceLoss, bce_dice_loss, dice_coef, iou_coef
from airbus_ships.model import LITE0_PREFIX, build_unet
from airbus_ships.pipeline import make_dataset


@pytest.mark.parametrize("size", [256, 768])
def test_output_shape(size):
    model = build_unet((4, 8, 16, 32), bottleneck_rates=(1, 2))
    out = model(np.zeros((1, size, size, 3), np.uint8))
    assert out.shape == (1, size, size, 1)
    assert float(np.min(out)) >= 0 and float(np.max(out)) <= 1  # sigmoid


def test_scratch_model_is_a_five_level_unet():
    model = build_unet((8, 16, 32, 64, 128))
    names = [layer.name for layer in model.layers]
    assert sum(n.startswith("pool") for n in names) == 5 and "bottleneck_d4" in names
    assert model.output_shape == (None, None, None, 1)
    assert network_stride(model) == 32


def test_train_default_model_is_the_pretrained_five_level_unet():
    """train.py's default model (EfficientNet-Lite0 encoder, no pool layers): stride 32, any multiple of it."""
    from airbus_ships.train import Config, build_model
    model = build_model(Config())
    names = [layer.name for layer in model.layers]
    assert Config().encoder == "efficientnet_lite0" and any(n.startswith(LITE0_PREFIX) for n in names)
    assert not any(n.startswith("pool") for n in names) and "bottleneck_d4" in names
    assert network_stride(model) == 32
    for size in (256, 768):
        out = model(np.zeros((1, size, size, 3), np.uint8))
        assert out.shape == (1, size, size, 1)


def test_small_ship_loss_weighs_small_ships_more():
    """Missing 12 pixels of a 12-pixel ship costs more than missing 12 inside a 1,200-pixel ship under the
    weighted loss; with weight 0 it is the plain loss; it survives a config round trip (checkpoints)."""
    y = np.zeros((1, 64, 64, 1), np.float32)
    y[0, 5:8, 5:9] = 1        # small ship: 12 px
    y[0, 20:50, 20:60] = 1    # large ship: 1,200 px
    good = np.where(y > 0, 0.9, 0.1).astype(np.float32)
    miss_small, miss_large = good.copy(), good.copy()
    miss_small[0, 5:8, 5:9] = 0.1
    miss_large[0, 34:37, 38:42] = 0.1  # 12 px in the middle of the large ship
    plain, weighted = bce_dice_loss, SmallShipBceDiceLoss(5.0)
    assert abs(float(plain(y, miss_small)) - float(plain(y, miss_large))) < 1e-6  # the plain loss cannot tell
    assert float(weighted(y, miss_small)) > float(weighted(y, miss_large)) + 1e-3
    assert abs(float(SmallShipBceDiceLoss(0.0)(y, miss_small)) - float(plain(y, miss_small))) < 1e-6
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(weighted),
                                                  custom_objects=CUSTOM_OBJECTS)
    assert (again.small_ship_weight, again.window) == (5.0, 15)


def test_checkpoints_of_removed_loss_terms_load_when_they_were_off():
    """A checkpoint's loss config from before the border and Lovasz terms were removed holds them at 0: it loads;
    one that used them is refused with the reason."""
    old = {**SmallShipBceDiceLoss(5.0).get_config(), "border_weight": 0.0, "border_width": 6, "lovasz_weight": 0.0}
    assert SmallShipBceDiceLoss.from_config(old).small_ship_weight == 5.0
    with pytest.raises(ValueError, match="lovasz_weight.*no longer has"):
        SmallShipBceDiceLoss.from_config({**old, "lovasz_weight": 1.0})


def test_a_run_trained_with_a_removed_option_is_not_continued(tmp_path):
    """--resume reads the run's config.json: removed options at the value that made them do nothing are
    ignored, another value is refused with the option named."""
    from airbus_ships.train import parse_args
    (tmp_path / "model").mkdir()
    saved = {"encoder": "scratch", "widths": "4,8", "epochs": 2, "input_mode": "crop", "ship_sampling": "pixel",
             "border_weight": 0.0, "border_width": 6, "lovasz_weight": 0.0, "calib_val_only": False}
    (tmp_path / "model" / "config.json").write_text(json.dumps(saved))
    cfg = parse_args(["--out", str(tmp_path), "--resume", "--epochs", "3"])
    assert (cfg.encoder, cfg.widths, cfg.epochs) == ("scratch", "4,8", 3)
    (tmp_path / "model" / "config.json").write_text(json.dumps({**saved, "input_mode": "resize"}))
    with pytest.raises(SystemExit, match="trained with {'input_mode': 'resize'}, which this code no longer has"):
        parse_args(["--out", str(tmp_path), "--resume", "--epochs", "3"])


def test_a_run_saved_before_an_option_existed_continues_without_it(tmp_path):
    """A config.json without ``hue_delta`` was trained without hue changes: --resume keeps it that way (0, not
    today's default); a run that saved it keeps its value; a new run gets the default."""
    from airbus_ships.train import Config, parse_args
    (tmp_path / "model").mkdir()
    saved = {"encoder": "scratch", "widths": "4,8", "epochs": 2}
    (tmp_path / "model" / "config.json").write_text(json.dumps(saved))
    assert parse_args(["--out", str(tmp_path), "--resume"]).hue_delta == 0.0
    (tmp_path / "model" / "config.json").write_text(json.dumps({**saved, "hue_delta": 0.3}))
    assert parse_args(["--out", str(tmp_path), "--resume"]).hue_delta == 0.3
    assert parse_args([]).hue_delta == Config.hue_delta > 0


@pytest.mark.slow
def test_few_training_steps_lower_the_loss(demo_dir):
    keras.utils.set_random_seed(0)
    frame = read_mask_table(demo_dir / "masks.csv", demo_dir / "images").frame
    x, y = next(iter(make_dataset(frame, batch_size=4, input_size=128, empty_share=0.25, seed=0)))
    model = build_unet((8, 16, 32))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=bce_dice_loss, metrics=[dice_coef, iou_coef])
    losses = [float(model.train_on_batch(x, y, return_dict=True)["loss"]) for _ in range(20)]
    assert min(losses[-3:]) < losses[0] - 0.1, losses


@pytest.mark.slow
def test_train_script_outputs_and_resume(trained_run):
    model_dir = trained_run / "model"
    for name in ("best.keras", "last.keras", "config.json", "postprocess.json"):
        assert (model_dir / name).is_file(), name
    assert (trained_run / "training_curves.png").stat().st_size > 1000
    log = pd.read_csv(trained_run / "train_log.csv")
    assert list(log["epoch"]) == [0, 1, 2]  # two epochs, then one more after --resume
    assert {"loss", "val_loss", "dice_coef", "val_iou_coef"} <= set(log.columns)
    rule = json.loads((model_dir / "postprocess.json").read_text())
    assert {"threshold", "min_size", "min_confidence"} <= set(rule)
    assert (rule["n_val_images"], rule["n_train_images"], rule["n_images"]) == (3, 2, 5)  # topped up
    assert rule["flips"] is True  # chosen on maps with test-time flips (the default), as test.py then predicts
    model = keras.saving.load_model(model_dir / "best.keras", custom_objects=CUSTOM_OBJECTS, safe_mode=True)
    assert model.output_shape[-1] == 1
    assert not list(trained_run.rglob("*.tmp*"))  # atomic writes leave no temporary file
    summary = json.loads((trained_run / "train_summary.json").read_text())
    assert summary["run_minutes"] >= summary["train_minutes"]
    assert summary["rule_minutes_reserved"] == 0  # no time budget by default: nothing kept back for the rule
    assert (summary["ended_by"], summary["ended_after_epoch"], summary["epochs_planned"]) == ("epochs", 3, 3)
    assert summary["cut_short"] is False and summary["best_epoch"] in (1, 2, 3)


@pytest.mark.slow
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(trained_run, demo_dir, tmp_path):
    """Same seed, same weights: the fixture's run (2 epochs, then --resume for a third, in two processes) and
    one uninterrupted 3-epoch run end with identical last.keras weights. The training stream is a function of
    the seed, and a resumed stream skips the images the first process trained on (before, two runs with one
    seed gave other weights, and a resumed run saw its first batches again)."""
    from airbus_ships.runtime import weights_digest
    from airbus_ships.tests.conftest import _run_script
    _run_script("train.py", "--data", demo_dir, "--out", tmp_path, "--encoder", "scratch",
                "--widths", "4,8,16", "--batch-size", "2", "--steps-per-epoch", "3", "--val-steps", "1",
                "--val-fraction", "0.25", "--calib-images", "5", "--epochs", "3")
    digests = [weights_digest(keras.saving.load_model(run / "model" / "last.keras", custom_objects=CUSTOM_OBJECTS))
               for run in (trained_run, tmp_path)]
    assert digests[0] == digests[1]


@pytest.mark.parametrize("reserve_s, stops", [(5.0, False), (15.0, True)])
def test_time_budget_keeps_time_for_the_ship_rule(reserve_s, stops):
    """50 s into a 60 s budget, an epoch that leaves the rule's reserve no room must not start."""
    import time

    import tensorflow as tf

    from airbus_ships.callbacks import TimeBudget

    budget = TimeBudget(1.0, tf.distribute.get_strategy(), start=time.time() - 50, reserve_s=reserve_s)
    model = build_unet((4, 8))
    model.stop_training = False
    budget.set_model(model)
    budget.on_epoch_end(0)  # this "epoch" took ~0 s: 50 + 0 + reserve against 60
    assert bool(model.stop_training) is stops


def test_a_learning_rate_cut_in_the_last_epoch_survives_resume(tmp_path):
    """The validation loss never improves after the first epoch, so ReduceLROnPlateau (patience 3) halves the rate
    at the end of the 4th and last epoch: last.keras and train_state.json must hold the halved rate, and the
    resumed run trains at it."""
    import time

    import tensorflow as tf

    from airbus_ships.callbacks import make_callbacks, saved_state
    from airbus_ships.train import Config, load_checkpoint

    cfg = Config(out=str(tmp_path), time_budget_min=0)
    (tmp_path / "model").mkdir()
    keras.utils.set_random_seed(0)
    # a one-layer map network (images in, a one-channel map out, as train.py's checkpoints must be)
    model = keras.Sequential([keras.Input((2, 2, 3)), keras.layers.Conv2D(1, 1, activation="sigmoid")])
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy")
    x = np.random.default_rng(0).normal(size=(32, 2, 2, 3)).astype("float32")
    ones, zeros = np.ones((32, 2, 2, 1), "float32"), np.zeros((32, 2, 2, 1), "float32")  # train to 1, validate on 0

    def fit(model, cfg, state, epochs):
        callbacks = make_callbacks(cfg, tmp_path, state, tf.distribute.get_strategy(), True, time.time(), 0.0)
        model.fit(x, ones, validation_data=(x, zeros), epochs=epochs, initial_epoch=state["epochs_done"],
                  callbacks=callbacks, verbose=0)

    fit(model, cfg, {"epochs_done": 0}, 4)
    state = json.loads((tmp_path / "model" / "train_state.json").read_text())
    assert state["learning_rate"] == pytest.approx(5e-3) and state["reduce_lr"]["wait"] == 0
    state = saved_state(tmp_path / "model", tmp_path / "train_log.csv")
    resumed = load_checkpoint(tmp_path / "model" / "last.keras")
    assert float(resumed.optimizer.learning_rate) == pytest.approx(5e-3)
    fit(resumed, Config(out=str(tmp_path), resume=True, time_budget_min=0), state, 5)
    log = pd.read_csv(tmp_path / "train_log.csv")  # the rate each epoch trained at
    assert list(log["epoch"]) == [0, 1, 2, 3, 4]
    assert log["learning_rate"].tolist() == pytest.approx([1e-2] * 4 + [5e-3])


@pytest.mark.slow
def test_resume_keeps_the_runs_config(trained_run):
    """conftest resumed the run with --out, --resume and --epochs only: the scratch encoder, its widths and the
    25% validation split come from the run's config.json; changing a locked option is refused."""
    from airbus_ships.train import parse_args
    saved = json.loads((trained_run / "model" / "config.json").read_text())
    assert (saved["encoder"], saved["widths"], saved["val_fraction"], saved["epochs"]) == ("scratch", "4,8,16", 0.25, 3)
    split = pd.read_csv(trained_run / "split.csv")
    assert (split["subset"] == "val").sum() == 3 and len(split) == 12
    cfg = parse_args(["--out", str(trained_run), "--resume", "--epochs", "9", "--batch-size", "3"])
    assert (cfg.encoder, cfg.val_fraction, cfg.epochs, cfg.batch_size) == ("scratch", 0.25, 9, 3)
    with pytest.raises(SystemExit, match="keeps its --encoder scratch .given: efficientnet_lite0.*--val-fraction"):
        parse_args(["--out", str(trained_run), "--resume", "--encoder", "efficientnet_lite0", "--val-fraction", "0.15"])
    assert parse_args(["--out", str(trained_run), "--resume", "--widths", "4, 8, 16"]).widths == "4, 8, 16"


@pytest.mark.parametrize("option", ["--predict-how", "--encoder", "--strategy", "--device"])
def test_a_typo_in_a_choice_is_refused_at_once(option, capsys):
    from airbus_ships.train import parse_args
    with pytest.raises(SystemExit):
        parse_args([option, "tiles"])
    assert "invalid choice: 'tiles'" in capsys.readouterr().err


@pytest.mark.slow
def test_train_survives_bad_images_in_the_calibration_set(demo_dir, tmp_path):
    """Without the up-front image check (--no-check-images), a truncated and a 700x500 image and the bad-input
    corpus (common/tests/bad_inputs.py, at 768x768) reach the training stream and the ship-rule images (all of
    them here): the run skips the broken ones there, names each with its reason, uses the readable ones, and
    writes postprocess.json and its summary (it used to die in rule_seconds, which a time budget calls, and in
    choose_ship_rule)."""
    import shutil

    from PIL import Image

    from airbus_ships.tests.conftest import _run_script
    from common.tests.bad_inputs import BROKEN, few_colours, write_corpus
    data = tmp_path / "airbus"
    shutil.copytree(demo_dir, data)
    good = sorted(p.name for p in (data / "images").iterdir())
    (data / "images" / "truncated.jpg").write_bytes((data / "images" / good[0]).read_bytes()[:3000])
    Image.new("RGB", (700, 500), (20, 40, 60)).save(data / "images" / "wide.jpg")
    cases = write_corpus(data / "corpus", few_colours((768, 768)))
    for case in cases:
        os.rename(data / "corpus" / case.name, data / "images" / f"corpus_{case.name}")
    with open(data / "masks.csv", "a") as f:
        f.write("truncated.jpg,\nwide.jpg,\n" + "".join(f"corpus_{c.name},\n" for c in cases))
    out = tmp_path / "run"
    proc = _run_script("train.py", "--data", data, "--out", out, "--no-check-images", "--encoder", "scratch",
                       "--widths", "4,8", "--batch-size", "2", "--steps-per-epoch", "2", "--val-steps", "1",
                       "--epochs", "1", "--val-fraction", "0.25", "--calib-images", "50", "--time-budget-min", "30")
    assert f"{data / 'images' / 'truncated.jpg'}: corrupt or truncated image" in proc.stderr
    assert f"{data / 'images' / 'wide.jpg'}: image is 700x500, not 768x768" in proc.stderr
    broken = [c for c in cases if c.kind == BROKEN]
    for case in broken:
        lines = [line for line in proc.stderr.splitlines() if f"/corpus_{case.name}: " in line]
        assert len(lines) == 1 and (case.reason in lines[0].lower() or "not 768x768" in lines[0]), lines
    assert "Traceback" not in proc.stderr
    rule = json.loads((out / "model" / "postprocess.json").read_text())
    # a dead link, a folder and an empty file are left out when the table is read (a stat, even unchecked)
    unchecked = [c for c in broken if c.name not in ("dangling.png", "folder.jpg", "empty.png")]
    assert rule["n_images"] == len(good) + len(cases) - len(broken)
    assert len(rule["skipped_images"]) == 2 + len(unchecked)
    assert (out / "train_summary.json").is_file() and (out / "training_curves.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--calib-images", "0"], "--calib-images must be at least 1, got 0"),  # used to fail after the whole fit
    (["--calib-images", "-3"], "--calib-images must be at least 1"),
    (["--epochs", "0"], "--epochs must be at least 1"),                     # used to die in the curve plot
    (["--steps-per-epoch", "0"], "--steps-per-epoch must be at least 1"),
    (["--val-steps", "0"], "--val-steps must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--threads", "-1"], "--threads must be at least 0"),
    (["--time-budget-min", "-5"], "--time-budget-min must be at least 0"),
    (["--empty-share", "1.5"], "--empty-share must be within 0..1, got 1.5"),
    (["--ship-crop-prob", "-0.1"], "--ship-crop-prob must be within 0..1"),
    (["--val-fraction", "1.5"], "--val-fraction must be between 0 and 1"),
    (["--val-fraction", "0"], "--val-fraction must be between 0 and 1"),
    (["--lr", "0"], "--lr must be positive"),
    (["--widths", "8,x,32"], "--widths must be positive integers"),
    (["--encoder", "efficientnet_lite0", "--widths", "8,16,32"], "has 5 levels: --widths must give 5"),
    (["--encoder", "scratch", "--widths", "8,16,32", "--input-size", "100"], "--input-size must be a multiple of 8"),
    (["--input-size", "1024"], "--input-size must be a multiple of 32 .* up to 768"),
])
def test_an_option_that_cannot_train_is_refused_at_once(args, message, capsys):
    """One line naming the option, before any data is read (these were tracebacks from pandas / numpy /
    TensorFlow, or, for --calib-images 0 and --epochs 0, a run that trained and then died)."""
    import re

    from airbus_ships.train import parse_args
    with pytest.raises(SystemExit):
        parse_args(args)
    assert re.search(message, capsys.readouterr().err)


def test_a_missing_data_folder_or_mask_table_is_one_line(tmp_path, demo_dir):
    from airbus_ships.train import main
    common = ["--out", str(tmp_path / "run"), "--encoder", "scratch", "--widths", "4,8"]
    with pytest.raises(SystemExit, match=f"{tmp_path / 'nothing'}: data folder not found"):
        main(["--data", str(tmp_path / "nothing"), *common])
    with pytest.raises(SystemExit, match=f"{tmp_path / 'missing.csv'}: cannot read the mask table"):
        main(["--data", str(demo_dir), "--csv", str(tmp_path / "missing.csv"), *common])


def test_a_checkpoint_is_never_replaced_by_a_stale_temporary_file(tmp_path):
    """A run killed while saving leaves best.keras.tmp.keras; after an epoch without improvement (nothing saved)
    that leftover used to be renamed onto best.keras."""
    from airbus_ships.callbacks import AtomicModelCheckpoint
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("adam", "mse")
    best = tmp_path / "best.keras"
    checkpoint = AtomicModelCheckpoint(str(best), monitor="val_loss", save_best_only=True)
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"val_loss": 1.0})
    saved = best.read_bytes()
    (tmp_path / "best.keras.tmp.keras").write_bytes(b"half a zip file")  # left by a killed run
    checkpoint.on_epoch_end(1, {"val_loss": 2.0})  # no improvement: nothing to save
    assert best.read_bytes() == saved
    checkpoint.on_epoch_end(2, {"val_loss": 0.5})
    keras.saving.load_model(best, compile=False)  # a whole checkpoint (its optimizer was never built: no state)
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.parametrize("cluster, task, chief", [
    ({"worker": ["a:1", "b:1"]}, ("worker", 0), True),
    ({"worker": ["a:1", "b:1"]}, ("worker", 1), False),
    ({"chief": ["c:1"], "worker": ["a:1", "b:1"]}, ("chief", 0), True),
    ({"chief": ["c:1"], "worker": ["a:1", "b:1"]}, ("worker", 0), False),  # was a second writer into --out
])
def test_exactly_one_process_writes_the_run_folder(cluster, task, chief):
    from types import SimpleNamespace

    import tensorflow as tf

    from airbus_ships.runtime import worker_role
    resolver = SimpleNamespace(task_type=task[0], task_id=task[1], cluster_spec=lambda: tf.train.ClusterSpec(cluster))
    assert worker_role(SimpleNamespace(cluster_resolver=resolver)) == (chief, task[1])
    assert worker_role(tf.distribute.get_strategy()) == (True, 0)


@pytest.mark.slow
def test_resume_with_nothing_left_to_train_says_so(trained_run, tmp_path):
    """The fixture's run did 3 of its --epochs 3: --resume without a larger --epochs used to train nothing, choose
    the ship rule again and report success; --calibrate-only without best.keras and a damaged config.json were
    tracebacks."""
    import shutil

    from airbus_ships.train import main, parse_args
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = (run / "model" / "config.json").read_text()
    with pytest.raises(SystemExit, match=r"3 epochs done, --epochs 3: nothing left to train"):
        main(["--out", str(run), "--resume"])
    assert (run / "model" / "config.json").read_text() == before  # untouched
    (run / "model" / "best.keras").unlink()
    with pytest.raises(SystemExit, match=r"--calibrate-only: .*best.keras not found"):
        main(["--out", str(run), "--calibrate-only"])
    (run / "model" / "config.json").write_text("{ half a file")
    with pytest.raises(SystemExit, match=r"config.json: cannot read the run's settings"):
        parse_args(["--out", str(run), "--resume"])


def test_training_into_an_earlier_run_warns(tmp_path, capsys):
    """A new run into a folder holding another run's checkpoints replaces them: said on stderr, as fcnn does."""
    from airbus_ships.train import warn_if_earlier_run
    warn_if_earlier_run(tmp_path)
    assert capsys.readouterr().err == ""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "last.keras").write_bytes(b"")
    warn_if_earlier_run(tmp_path)
    assert "holds an earlier run (model/last.keras)" in capsys.readouterr().err


@pytest.mark.slow
def test_help_and_a_wrong_option_answer_without_the_heavy_libraries():
    """Every script parses its options before importing TensorFlow, Keras, pandas, SciPy, scikit-learn or
    matplotlib: --help (and an option error of train.py / test.py) come back at once (~0.6 s at load 7, 2 cores)."""
    import subprocess
    import sys

    from airbus_ships.tests.conftest import ROOT
    heavy = ("tensorflow", "keras", "pandas", "scipy", "sklearn", "matplotlib")
    check = ("import sys, runpy; sys.argv = [{script!r}, {arg!r}]\n"
             "try:\n    runpy.{run}({script!r}, run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))")
    scripts = [("run_path", "airbus_ships/train.py", "--encoder=tiles"),
               ("run_path", "airbus_ships/test.py", "--how=tiles"), ("run_path", "airbus_ships/bench.py", None),
               ("run_module", "airbus_ships.figures", None),
               ("run_module", "airbus_ships.demo_data", None), ("run_module", "airbus_ships.studies.rule_study", None),
               ("run_module", "airbus_ships.studies.stream_check", None),
               ("run_module", "airbus_ships.studies.learning_curve", None)]
    for run, script, wrong in scripts:
        for arg in ("--help", wrong) if wrong else ("--help",):
            proc = subprocess.run([sys.executable, "-c", check.format(script=script, arg=arg, run=run, heavy=heavy)],
                                  cwd=ROOT, capture_output=True, text=True, timeout=120)
            lines = proc.stdout.strip().splitlines()
            assert lines and lines[-1] == "[]", (script, arg, proc.stdout[-500:], proc.stderr[-500:])
            if arg == "--help":  # empty defaults are left out, and each option states one default at most
                text = " ".join(proc.stdout.split())
                assert "(default: )" not in text and "(default: None)" not in text and "(default: [])" not in text
                assert "else everything) (default:" not in text, script


def test_train_and_test_import_nothing_from_studies():
    """The product (every module of the package) does not depend on the one-off studies in studies/."""
    import ast

    from airbus_ships.tests.conftest import PKG
    for path in PKG.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("airbus_ships.studies") for n in names), path.name
