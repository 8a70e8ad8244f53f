"""The finetune stage's view of torchrun: rank, world size and device from its environment (or a single process),
the process group (nccl on GPU, gloo on CPU), and the two collectives the training loop needs.
"""

from __future__ import annotations

import os


class Dist:
    """torchrun's environment, or a single process."""

    def __init__(self) -> None:
        import torch
        import torch.distributed as dist

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.cuda = torch.cuda.is_available()
        self.device = torch.device(f"cuda:{self.local_rank}" if self.cuda else "cpu")
        if self.cuda:
            torch.cuda.set_device(self.device)  # FSDP2's default device mesh uses the current device
        if self.world > 1:
            dist.init_process_group("nccl" if self.cuda else "gloo")

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.world > 1:
            dist.barrier()

    def mean(self, value: float) -> float:
        import torch
        import torch.distributed as dist

        if self.world == 1:
            return value
        tensor = torch.tensor([value], device=self.device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world
