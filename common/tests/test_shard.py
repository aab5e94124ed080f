"""common.shard: deterministic shards and merges that reproduce a single worker's output exactly."""
import argparse
import csv
import json

import pytest

from common.shard import find_shards, main, merge_csv, merge_json, parse_shard, select_shard, shard_path


def test_parse_shard():
    assert parse_shard("0/1") == (0, 1)
    assert parse_shard(" 3 / 4 ") == (3, 4)
    for bad in ["4/4", "1/0", "-1/2", "a/b", "1", ""]:
        with pytest.raises(argparse.ArgumentTypeError):
            parse_shard(bad)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 12])
def test_shards_partition_sorted_items(n):
    items = [f"img_{i:03d}.png" for i in range(10)][::-1]
    shards = [select_shard(items, (i, n)) for i in range(n)]
    flat = [x for s in shards for x in s]
    assert sorted(flat) == sorted(items) and len(flat) == len(items)  # disjoint and complete
    assert all(s == sorted(s) for s in shards)
    assert select_shard(items, None) == sorted(items)
    assert select_shard(items, (0, n)) == select_shard(list(reversed(items)), (0, n))  # input order irrelevant


def test_shard_path():
    assert shard_path("runs/a/results.csv", None).name == "results.csv"
    assert shard_path("runs/a/results.csv", (1, 3)).name == "results.shard-1-of-3.csv"


def _write_csv(path, header, rows, lineterminator="\r\n"):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator=lineterminator)
        w.writerow(header)
        w.writerows(rows)


@pytest.mark.parametrize("lineterminator", ["\r\n", "\n"])
def test_merge_csv_equals_single_worker(tmp_path, lineterminator):
    # several rows per key (one per ship), and a key with an empty value, as in a Kaggle submission
    rows = {f"{i:02d}.jpg": [[f"{i:02d}.jpg", f"{j + 1} 3"] for j in range(i % 3)] or [[f"{i:02d}.jpg", ""]]
            for i in range(11)}
    header = ["ImageId", "EncodedPixels"]
    single = tmp_path / "single.csv"
    _write_csv(single, header, [r for k in sorted(rows) for r in rows[k]], lineterminator)
    out = tmp_path / "sub.csv"
    for i in range(3):
        keys = select_shard(rows, (i, 3))
        _write_csv(shard_path(out, (i, 3)), header, [r for k in keys for r in rows[k]], lineterminator)
    assert main(["merge", str(out)]) == 0
    assert out.read_bytes() == single.read_bytes()


def test_merge_json_equals_single_worker(tmp_path):
    results = {f"p{i}.png": {"confidence": i / 10, "result": "quartz" if i % 2 else "unknown"} for i in range(9)}
    out = tmp_path / "results.json"
    for i in range(2):
        part = {k: results[k] for k in select_shard(results, (i, 2))}
        shard_path(out, (i, 2)).write_text(json.dumps(part, indent=2) + "\n")
    assert main(["merge", str(out)]) == 0
    assert out.read_text() == json.dumps({k: results[k] for k in sorted(results)}, indent=2) + "\n"


def test_merge_json_writes_undefined_values_as_null(tmp_path, strict_json):
    """A shard written before write_json/dumps_json made NaN null held a bare NaN; the merge copied it, which
    strict JSON parsers (JSON.parse, jq) reject."""
    out = tmp_path / "results.json"
    shard_path(out, (0, 2)).write_text('{"a.png": {"confidence": NaN, "result": "unknown"}}\n')
    shard_path(out, (1, 2)).write_text('{"b.png": {"confidence": 0.5, "result": "quartz"}}\n')
    assert main(["merge", str(out)]) == 0
    assert strict_json(out.read_text()) == {"a.png": {"confidence": None, "result": "unknown"},
                                        "b.png": {"confidence": 0.5, "result": "quartz"}}


def test_merge_refuses_missing_overlapping_and_mixed(tmp_path, capsys):
    out = tmp_path / "scores.csv"
    _write_csv(shard_path(out, (0, 3)), ["image", "score"], [["a", "1"]])
    _write_csv(shard_path(out, (2, 3)), ["image", "score"], [["c", "1"]])
    with pytest.raises(FileNotFoundError, match=r"\[1\] of 3 missing"):
        find_shards(out)
    assert main(["merge", str(out)]) == 1 and "missing" in capsys.readouterr().err
    assert not out.exists()  # nothing half-written
    _write_csv(shard_path(out, (1, 3)), ["image", "score"], [["c", "2"]])
    with pytest.raises(ValueError, match="overlap"):
        merge_csv(find_shards(out), out)
    _write_csv(shard_path(out, (1, 3)), ["image", "other"], [["b", "2"]])
    with pytest.raises(ValueError, match="header"):
        merge_csv(find_shards(out), out)
    _write_csv(shard_path(out, (0, 2)), ["image", "score"], [["a", "1"]])
    with pytest.raises(ValueError, match="different worker counts"):
        find_shards(out)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text('{"x": 1}'), b.write_text('{"x": 2}')
    with pytest.raises(ValueError, match="overlap"):
        merge_json([a, b], tmp_path / "m.json")
    assert not out.exists()


def test_shard_argument_defaults_to_launcher_rank(monkeypatch):
    from common.shard import add_shard_argument, launcher_env
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert launcher_env() == (0, 1, 0)
    parser = argparse.ArgumentParser()
    add_shard_argument(parser)
    assert parser.parse_args([]).shard is None and parser.parse_args(["--shard", "1/3"]).shard == (1, 3)
    monkeypatch.setenv("RANK", "1"), monkeypatch.setenv("WORLD_SIZE", "2"), monkeypatch.setenv("LOCAL_RANK", "1")
    parser = argparse.ArgumentParser()
    add_shard_argument(parser)
    assert launcher_env() == (1, 2, 1) and parser.parse_args([]).shard == (1, 2)
