"""Scale-out: 2-process DistributedDataParallel training on CPU (gloo, torchrun on 127.0.0.1) and sharded
inference whose merged output equals the single-worker JSON byte for byte."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minerals import predict, train

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")
TINY = ["--img-size", "32", "--width", "0.5", "--batch-size", "16", "--threads", "1", "--no-export"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(WORKER), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return p


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k].cpu(), b[k].cpu()), k


@pytest.mark.slow
def test_two_processes_hold_identical_weights_and_resume(samples, tmp_path):
    out = tmp_path / "ddp"
    torchrun(["--data", str(samples), "--out", str(out), "--epochs", "2", "--max-steps", "3", *TINY])
    ranks = [torch.load(out / f"weights.rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert_same_weights(*ranks)
    last = torch.load(out / "last.pt", weights_only=True)
    assert_same_weights(last["model"], ranks[0])  # rank 0's checkpoint is what every rank trained
    assert json.loads((out / "result.json").read_text())["world_size"] == 2
    # --resume continues the distributed run from last.pt; the ranks still agree afterwards
    torchrun(["--data", str(samples), "--out", str(out), "--epochs", "2", "--resume", str(out / "last.pt"), *TINY])
    ranks2 = [torch.load(out / f"weights.rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert_same_weights(*ranks2)
    assert not torch.equal(ranks2[0]["fc.weight"], ranks[0]["fc.weight"])  # it trained on
    assert [h["epoch"] for h in torch.load(out / "last.pt", weights_only=True)["history"]] == [1, 2]


@pytest.mark.slow
def test_two_processes_plan_the_same_epochs_within_the_time_budget(samples, tmp_path):
    """The budget probe under DDP: both processes time an epoch, agree on the slowest estimate, plan the same
    epochs and end with identical weights; a budget too small for the asked epochs plans fewer."""
    out = tmp_path / "ddp_budget"
    p = torchrun(["--data", str(samples), "--out", str(out), "--epochs", "3", "--time-budget-min", "0.5", *TINY])
    result = json.loads((out / "result.json").read_text())
    assert result["epoch_seconds_estimate"] > 0 and result["epochs_planned"] == 1, result  # 30 s: all kept back
    assert "an epoch takes about" in p.stderr
    assert_same_weights(*[torch.load(out / f"weights.rank{r}.pt", weights_only=True) for r in (0, 1)])


def test_distributed_batches_cover_the_single_process_batches(samples):
    """Batch arithmetic: with N processes of batch B/N, step k sees the samples of step k of one process."""
    cfg = train.parse_args(["--data", str(samples), *TINY])
    one = list(train.make_loaders(cfg, 0, 1)[2].batch_sampler)
    two = [list(train.make_loaders(cfg, r, 2)[2].batch_sampler) for r in (0, 1)]
    perm_one = [list(train.make_loaders(cfg, 0, 1)[2].sampler)]
    assert len(two[0]) == len(two[1]) and abs(len(two[0]) - len(one)) <= 1
    for k in range(min(len(one), len(two[0])) - 1):  # the last batch may hold DistributedSampler's padding
        assert sorted(one[k]) == sorted(two[0][k] + two[1][k]), k
    assert perm_one[0] != sorted(perm_one[0])  # shuffled


@pytest.mark.slow
def test_sharded_predict_merges_to_the_single_worker_json(run, samples, tmp_path):
    files = sorted((samples / "patches").rglob("*.jpg"))[::3]
    folder = tmp_path / "in"
    folder.mkdir()
    for p in files:
        (folder / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not an image")  # errors shard and merge like any result
    base = [str(folder), "--checkpoint", str(run / "best.pt"), "--threads", "1"]
    predict.main(base + ["--out", str(tmp_path / "single.json")])
    for i in range(2):  # one shard through --out, one through stdout as a user would redirect it
        if i == 0:
            predict.main(base + ["--shard", f"{i}/2", "--out", str(tmp_path / "results.json")])
        else:
            p = subprocess.run([sys.executable, str(ROOT / "minerals" / "predict.py"), *base, "--shard", f"{i}/2"],
                               capture_output=True, text=True, cwd=tmp_path)
            (tmp_path / f"results.shard-{i}-of-2.json").write_text(p.stdout)
            assert p.returncode == int("broken.jpg" in json.loads(p.stdout)), p.stderr  # 1 when a file failed
    shard0 = json.loads((tmp_path / "results.shard-0-of-2.json").read_text())
    shard1 = json.loads((tmp_path / "results.shard-1-of-2.json").read_text())
    assert shard0 and shard1 and not set(shard0) & set(shard1)
    m = subprocess.run([sys.executable, "-m", "common.shard", "merge", str(tmp_path / "results.json")],
                       capture_output=True, text=True, cwd=ROOT)
    assert m.returncode == 0, m.stderr
    assert (tmp_path / "results.json").read_bytes() == (tmp_path / "single.json").read_bytes()
    single = json.loads((tmp_path / "single.json").read_text())
    assert list(single) == sorted(single) and len(single) == len(files) + 1


@pytest.mark.parametrize("backbone", ["orenet", "efficientnet_lite0", "efficientnet_lite1"])
def test_every_batch_norm_is_synchronised_for_cuda(backbone):
    """sync_batchnorm (DDP on CUDA) leaves no BatchNorm that normalises with one process's batch, and the network
    computes what it did: timm's fused BatchNormAct2d of every EfficientNet-Lite keeps its activation (torch's
    converter would drop it), not only Lite0's."""
    import copy

    from minerals.model import build_model
    from minerals.runtime import sync_batchnorm

    model = build_model(backbone, 8, pretrained=False).eval()
    synced = sync_batchnorm(copy.deepcopy(model), backbone).eval()
    norms = [m for m in synced.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(synced(x), model(x))
