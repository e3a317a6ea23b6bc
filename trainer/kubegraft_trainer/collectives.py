"""The trainer's own collectives, on the process group's device.

The loop gathers the logged loss, evaluation results and cached features, and all-reduces the
preemption flag. NCCL communicates only CUDA tensors (on the rank's own device); gloo takes
CPU ones. So a collective must move its tensor to the device of the process group, and the
rule for which device that is lives here once (:func:`collective_device`): every tensor
collective the trainer issues itself goes through the functions below, and no other trainer
module calls ``torch.distributed``'s tensor collectives (a test checks both).

Results come back on the device of the caller's tensor (the callers want CPU tables and Python
numbers). With a process group the collective runs even at world size 1, so a one-GPU run
exercises the same device handling as a multi-GPU one; without a process group (one process
started without torchrun) there is no one to talk to and the input is the result.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def collective_device() -> torch.device:
    """The device whose tensors the default process group communicates.

    The rank's current CUDA device (Accelerate and DeepSpeed set it to the local rank's GPU)
    when the group has an NCCL backend, the CPU otherwise (gloo, or no process group).
    """
    if _distributed() and "nccl" in str(dist.get_backend()).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_all(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (same shape on every rank) from all processes, in rank order."""
    if not _distributed():
        return tensor
    local = tensor.to(collective_device()).contiguous()
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    return torch.cat(parts).to(tensor.device)


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any process (every process gets the same answer)."""
    if not _distributed():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_ranks(flag: bool) -> bool:
    """Whether ``flag`` is true on every process (every process gets the same answer)."""
    return not any_rank(not flag)


__all__ = ["all_ranks", "any_rank", "collective_device", "gather_all"]
