"""DistributedDataParallel training: 2 CPU processes (gloo on 127.0.0.1), as torchrun would start them."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from fcnn_rgb_gt import train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, args: list[str], weights_dir: str) -> None:
    # the environment torchrun sets for each process
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    summary, model = train.train(train.parse_args(args))
    assert summary["rank"] == rank and summary["world_size"] == world
    torch.save(dict(model.named_parameters()), os.path.join(weights_dir, f"rank{rank}.pt"))


def _run(world: int, args: list[str], weights_dir) -> list[dict]:
    mp.spawn(_worker, args=(world, _free_port(), args, str(weights_dir)), nprocs=world, join=True)
    return [torch.load(weights_dir / f"rank{r}.pt", weights_only=True) for r in range(world)]


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_two_processes_end_with_identical_weights_and_resume(pair_dir, tmp_path):
    out = tmp_path / "run"
    args = ["--data", str(pair_dir), "--out", str(out), "--tile", "64", "--batch-size", "2", "--threads", "1"]
    w0, w1 = _run(2, args + ["--epochs", "2"], tmp_path)
    _assert_same(w0, w1)  # gradients were averaged: both ranks took the same steps
    ckpt = torch.load(out / "last.pt", weights_only=True)  # written by rank 0 only
    assert ckpt["epoch"] == 2 and len(ckpt["history"]) == 2
    assert torch.equal(ckpt["model"]["conv4.weight"], w0["conv4.weight"])
    assert json.loads((out / "config.json").read_text())["world_size"] == 2

    w0, w1 = _run(2, args + ["--epochs", "3", "--resume"], tmp_path)
    _assert_same(w0, w1)
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 3 and [h["epoch"] for h in ckpt["history"]] == [1, 2, 3]
