"""predict.py / evaluate.py refuse what cannot work with one line naming the option or the file, and the JSON never
contradicts itself."""
import json

import numpy as np
import pytest
import torch

from minerals import evaluate
from minerals import predict as predict_module
from minerals.config import CLASSES
from minerals.tests.checkpoints import bad_checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("args, says", [
    (["--threshold", "nan"], "--threshold nan"), (["--threshold", "-0.1"], "--threshold -0.1"),
    (["--threshold", "1.5"], "--threshold 1.5"), (["--threads", "0"], "--threads 0"),
    (["--batch-size", "0"], "--batch-size 0")])
def test_predict_refuses_option_values_that_cannot_work(run, samples, capsys, args, says):
    patch = next((samples / "patches" / "pyrite").glob("*.jpg"))
    with pytest.raises(SystemExit) as exc:
        predict_module.main([str(patch), "--checkpoint", str(run / "best.pt"), *args])
    err = capsys.readouterr()
    assert exc.value.code == 2 and says in err.err and err.out == ""


@pytest.mark.slow
def test_predict_out_that_is_a_folder_is_refused_before_the_work(run, samples, tmp_path, capsys):
    patch = next((samples / "patches" / "pyrite").glob("*.jpg"))
    with pytest.raises(SystemExit) as exc:
        predict_module.main([str(patch), "--checkpoint", str(run / "best.pt"), "--out", str(tmp_path)])
    assert exc.value.code == 2 and "is a folder" in capsys.readouterr().err


BAD_CHECKPOINTS = ["empty", "random", "text", "truncated", "state_dict_only", "other_task", "wrong_shape", "folder",
                   "dangling", "evil_pickle", "evil_torch"]


@pytest.mark.parametrize("kind", BAD_CHECKPOINTS)
def test_a_bad_checkpoint_is_one_line_naming_the_file_and_the_reason(tmp_path, kind):
    """Never torch's advice to load with weights_only=False, never the code of a malicious file run."""
    path = tmp_path / "best.pt"
    says = bad_checkpoint(path, kind)
    with pytest.raises(predict_module.CheckpointError) as exc:
        predict_module.load_classifier(path, torch.device("cpu"))
    message = str(exc.value)
    assert message.startswith(str(path)) and says in message.lower(), message
    assert "\n" not in message and "weights_only" not in message and len(message) < 300, message
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("kind", ["empty", "evil_torch", "state_dict_only"])
def test_resume_from_a_bad_checkpoint_is_one_line(tmp_path, kind):
    from minerals import train

    path = tmp_path / "last.pt"
    bad_checkpoint(path, kind)
    with pytest.raises(SystemExit) as exc:
        train.main(["--resume", str(path), "--out", str(tmp_path / "run")])
    message = str(exc.value.code)
    assert message.startswith(f"error: --resume {path}") and "weights_only" not in message and "\n" not in message
    assert not (tmp_path / "pwned").exists()


def test_json_confidence_never_contradicts_the_result():
    """0.4999996 is written as 0.5: at threshold 0.5 its result must then be the mineral, not 'unknown'."""
    probs = np.zeros(len(CLASSES), np.float32)
    probs[5], probs[-1] = 0.4999996, 0.5000004
    entry = predict_module.json_entry(probs, 0.5)
    assert entry == {"confidence": 0.5, "result": "pyrite"}
    assert (entry["result"] == "unknown") == (entry["confidence"] < 0.5)
    probs[5] = 0.4999994
    assert predict_module.json_entry(probs, 0.5) == {"confidence": 0.499999, "result": "unknown"}


@pytest.mark.slow
def test_a_file_given_twice_is_classified_once_and_an_empty_folder_is_said(run, samples, tmp_path, capsys):
    patch = next((samples / "patches" / "pyrite").glob("*.jpg"))
    rc = predict_module.main([str(patch), str(patch), "--checkpoint", str(run / "best.pt"), "--threads", "1"])
    out = capsys.readouterr()
    assert rc == 0 and list(json.loads(out.out)) == [patch.name] and "1 classified, 0 unreadable" in out.err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a patch")
    rc = predict_module.main([str(tmp_path / "empty"), "--checkpoint", str(run / "best.pt"), "--threads", "1"])
    out = capsys.readouterr()
    assert rc == 2 and json.loads(out.out) == {} and "no image files" in out.err and "empty" in out.err
    assert "skipped 1 files without an image extension" in out.err and "notes.txt" in out.err


@pytest.mark.slow
@pytest.mark.parametrize("args, says", [(["--threshold", "nan"], "--threshold nan"),
                                        (["--threads", "0"], "--threads 0")])
def test_evaluate_refuses_option_values_that_cannot_work(run, samples, capsys, args, says):
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--checkpoint", str(run / "best.pt"), "--data", str(samples), *args])
    assert exc.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_split_of_other_samples_is_said(run, samples, tmp_path, capsys):
    """--split val on samples extracted again since the run (other patch names) said 'no readable patch', or
    silently scored the few validation patches still found."""
    import csv
    import shutil

    other = tmp_path / "samples"
    shutil.copytree(samples, other)
    with open(samples / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(run / "split.csv", newline="") as f:
        val = {r["patch"] for r in csv.DictReader(f) if r["split"] == "val"}
    keep = [r for r in rows if r["patch"] not in val]
    with open(other / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)
    with pytest.raises(ValueError, match=f"{len(val)} of the {len(val)} val patches .* not in"):
        evaluate.labelled_patches(other, run / "split.csv", "val")
    first_val = next(r for r in rows if r["patch"] in val)
    with open(other / "index.csv", "a", newline="") as f:
        csv.DictWriter(f, fieldnames=list(rows[0])).writerow(first_val)
    assert len(evaluate.labelled_patches(other, run / "split.csv", "val")) == 1
    assert f"warning: {len(val) - 1} of the {len(val)} val patches" in capsys.readouterr().err


def test_evaluate_says_which_class_folders_it_leaves_out(samples, tmp_path, capsys):
    import shutil

    shutil.copytree(samples / "patches" / "quartz", tmp_path / "quartz")
    shutil.copytree(samples / "patches" / "pyrite", tmp_path / "Pyrite")
    pairs = evaluate.labelled_patches(tmp_path)
    assert {c for _, c in pairs} == {"quartz"} and "folders ['Pyrite'] are not among" in capsys.readouterr().err
