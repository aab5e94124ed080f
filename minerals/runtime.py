"""Where the minerals scripts run: the device and, under ``torchrun``, the process group.

One process without a launcher needs nothing here but :func:`pick_device`. Under torchrun (WORLD_SIZE > 1)
:func:`setup_distributed` joins the process group from the launcher's environment (MASTER_ADDR, MASTER_PORT,
RANK, WORLD_SIZE): nccl with one GPU per process (LOCAL_RANK) on CUDA, gloo on CPU
(https://pytorch.org/docs/stable/notes/ddp.html).
"""
from __future__ import annotations

import resource
from pathlib import Path

import torch
import torch.distributed as dist

from common.shard import launcher_env


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return torch.device(name)


def setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when launched by torchrun with several processes."""
    rank, world, local_rank = launcher_env()
    device = pick_device(device_name)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def sync_batchnorm(model: torch.nn.Module, backbone: str) -> torch.nn.Module:
    """BatchNorm statistics over the global batch on CUDA (SyncBatchNorm runs on GPUs only; on CPU each process
    normalises with its own batch and DDP broadcasts rank 0's running statistics every step)."""
    from minerals.config import TRANSFER_SIZES

    if backbone in TRANSFER_SIZES:  # timm's EfficientNet-Lites
        from timm.layers import convert_sync_batchnorm  # also converts timm's fused BatchNormAct2d

        return convert_sync_batchnorm(model)
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def all_reduce(values: list[float], device: torch.device, op=None) -> list[float]:
    """``values`` reduced over all processes (sum by default); unchanged in a single process."""
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.tolist()


def finish_distributed(device: torch.device) -> None:
    """Wait for every process, then leave the process group (nothing to do in a single process)."""
    if not dist.is_initialized():
        return
    if device.type == "cuda":  # SyncBatchNorm layers share their parameters and buffers with the model
        torch.cuda.synchronize()
    dist.barrier()
    dist.destroy_process_group()


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: VmHWM of /proc/self/status where there is one (it starts afresh at
    exec, unlike ``getrusage``'s ru_maxrss, which a process started by a larger one inherits), else ru_maxrss."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB (macOS: bytes)
