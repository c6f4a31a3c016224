"""Multi-process data-parallel training (DDP), started by ``torchrun`` or by ``emgkey train --nproc N``.

One process per device (or per CPU share), each with its own shard of the
training windows (``DistributedSampler``) and a full model replica whose
gradients DDP averages. Backend: NCCL when the processes use GPUs, gloo on CPU.

Rules the training loop follows:
- every rank computes; only rank 0 writes (checkpoints, metrics, logs, bars);
- validation shards windows without repeats (``data.ShardSampler``) and the
  error counts and loss sums are summed over ranks (``all_reduce_sum``), so the
  CER is exactly the single-process CER;
- a checkpoint saved by rank 0 holds the bare model (``checkpoint.unwrap``), so
  it loads in one process, or in any number of them.

``launch`` re-runs the same ``emgkey`` command under ``torch.distributed.run``
(what ``torchrun`` is), so ``emgkey train --nproc 2 ...`` and
``torchrun --nproc_per_node 2 -m emgkey.cli train ...`` are the same run.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """Processes in this job according to torchrun's environment (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(use_cuda: bool) -> DistInfo:
    """Join the process group torchrun described in the environment; a no-op for one process."""
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        log.debug("rank %d/%d joined (%s)", rank, world, backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: Sequence[float], info: DistInfo, device: torch.device) -> list[float]:
    """Sum a few numbers over ranks (float64, so error counts stay exact)."""
    if not info.enabled:
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def wrap(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """DDP around the model when several processes run; the model itself otherwise.

    DDP registers the parameters that require gradients when it is built, so
    the loop calls this again whenever gradual unfreezing changes that set.
    """
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``emgkey <argv>`` in ``nproc`` processes under ``torch.distributed.run``; its exit code.

    ``--standalone`` picks a free local rendezvous port, so several jobs can
    run side by side. Worker output goes to this terminal.
    """
    assert nproc >= 2, "launch is for 2 or more processes"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "emgkey.cli",
        *argv,
    ]
    log.info("launching %d processes: %s", nproc, " ".join(cmd))
    return subprocess.call(cmd)
