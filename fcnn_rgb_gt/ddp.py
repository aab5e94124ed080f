"""DistributedDataParallel plumbing for train.py: the process group of a torchrun launch, the wrapped model, and
rank 0's decisions sent to every rank. One process (no torchrun) needs none of it: every helper is then a no-op."""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as dist

from common.shard import launcher_env


@contextmanager
def distributed(device: torch.device):
    """``(rank, world_size, device)``; under torchrun (WORLD_SIZE > 1) a process group for the run: nccl on CUDA
    (one GPU per local rank), gloo on CPU, initialised from torchrun's environment (MASTER_ADDR/PORT, RANK, ...)."""
    rank, world, local_rank = launcher_env()
    if world == 1:
        yield 0, 1, device
        return
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield rank, world, device
        # the other ranks finish their loop while rank 0 still validates and saves the last epoch: wait for it, so
        # that no rank tears its connections down under a peer that is still using the group
        dist.barrier()
    finally:
        dist.destroy_process_group()


def wrap_ddp(model: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    """DistributedDataParallel when world > 1 (it broadcasts rank 0's weights and buffers). On CUDA batch norm
    becomes SyncBatchNorm (statistics over the global batch); gloo has no SyncBatchNorm, so on CPU each rank
    normalises with its own batch's statistics and the running statistics are rank 0's (broadcast every step)."""
    if world == 1:
        return model
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def rank0_decides(value, world: int):
    """Rank 0's ``value`` on every rank (e.g. the time-limit stop, so that all ranks leave the loop together)."""
    if world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value, world: int) -> list:
    """Every rank's ``value``, in rank order, on every rank."""
    if world == 1:
        return [value]
    values = [None] * world
    dist.all_gather_object(values, value)
    return values


def mean_over_ranks(value: float, device: torch.device, world: int) -> float:
    """The mean of a float over the ranks (e.g. the training loss, for the log)."""
    if world == 1:
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t)
    return t.item() / world
