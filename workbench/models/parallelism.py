"""transformers' ``DistributedConfig`` for a model sharded over the ranks of a torchrun job.

``tp_size`` ranks form one tensor-parallel group; a job of ``WORLD_SIZE = D × tp_size`` ranks holds
``D`` groups, each with a whole copy of the model sharded over its own ranks. transformers lays its
device mesh out as ``(pp, dp_replicate, fsdp, tp)`` with ``tp`` innermost, so group ``g`` is the
ranks ``g·tp_size … (g+1)·tp_size − 1`` (:func:`tp_group_of`), and its tensor-parallel collectives
run on that group alone.

A mesh with ``D > 1`` needs ``dp_replicate_size = D``, and transformers then wraps the model in FSDP2
(``dp_size > 1``), which is for training: it renames the wrapped classes, gathers parameters around
every forward, and fails under ``torch.inference_mode`` ("Inference tensors do not track version
counter", measured with transformers 5.25, torch 2.13). Capture has nothing to shard or reduce across
groups (each group sees its own prompts), so :class:`ReplicatedGroups` reports ``dp_size = 1``: the
mesh keeps its ``dp_replicate`` dimension, tensor parallelism is applied per group, FSDP is not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from transformers.distributed.configuration_utils import DistributedConfig

__all__ = ["ParallelLayout", "ReplicatedGroups", "distributed_config", "parallel_layout", "tp_group_of"]


class ReplicatedGroups(DistributedConfig):
    """``DistributedConfig`` whose ``dp_replicate_size`` groups are plain replicas: each group sees its
    own batches and nothing is sharded or reduced across groups, so no FSDP wrapping (see the module)."""

    @property
    def dp_size(self) -> int:
        return 1


@dataclass(frozen=True)
class ParallelLayout:
    """How the ranks of a job divide: ``dp_size`` groups of ``tp_size`` ranks (tensor parallel inside)."""

    world_size: int
    tp_size: int

    @property
    def dp_size(self) -> int:
        return self.world_size // self.tp_size

    def group(self, rank: int) -> int:
        """The data-parallel group (tensor-parallel group) ``rank`` belongs to."""
        return rank // self.tp_size

    def leads(self, rank: int) -> bool:
        """Whether ``rank`` is its group's first rank (the one that writes the group's records)."""
        return rank % self.tp_size == 0


def parallel_layout(world_size: int, tp_size: int | None) -> ParallelLayout:
    """The layout of a job of ``world_size`` ranks with groups of ``tp_size`` (None: one group of all).

    Raises ValueError, naming the fix, when ``tp_size`` cannot divide the job.
    """
    size = world_size if tp_size is None else tp_size
    if size < 2:
        raise ValueError(
            f"a tensor-parallel group of {size} rank shards nothing: give --tp-size of at least 2, or drop "
            "--tp-size/--tp-plan to capture data-parallel with a whole model on every rank"
        )
    if world_size % size:
        raise ValueError(
            f"--tp-size {size} does not divide the job's {world_size} ranks (WORLD_SIZE): start "
            f"torchrun --nproc-per-node with a multiple of {size}, or give a --tp-size that divides {world_size}"
        )
    return ParallelLayout(world_size=world_size, tp_size=size)


def tp_group_of(rank: int, layout: ParallelLayout) -> list[int]:
    """The global ranks of ``rank``'s tensor-parallel group, as transformers' mesh lays them out."""
    first = layout.group(rank) * layout.tp_size
    return list(range(first, first + layout.tp_size))


def distributed_config(
    tp_plan: Any, tp_size: int | None = None, expert_parallel: bool = False
) -> DistributedConfig:
    """The ``DistributedConfig`` for ``from_pretrained``: one tensor-parallel group over the whole job
    (``tp_size`` None), or ``WORLD_SIZE / tp_size`` replicated groups of ``tp_size`` ranks.

    ``expert_parallel`` also splits each MoE block's experts over the ranks of a group (transformers'
    ``ep_size`` = the group's size, its model's ``base_model_ep_plan``; its rules take precedence over
    the tensor-parallel ones on the experts): each rank runs its own experts on the group's batch and
    an all-reduce sums their outputs.
    """
    if tp_size is None and not expert_parallel:
        return DistributedConfig(tp_plan=tp_plan)
    world = os.environ.get("WORLD_SIZE")
    if not world:
        raise ValueError(
            "tp_size and expert parallelism divide the ranks of a torchrun job, and WORLD_SIZE is unset: "
            "start it with torchrun --nproc-per-node N -m workbench.capture"
        )
    layout = parallel_layout(int(world), tp_size)
    sizes: dict[str, Any] = {"tp_plan": tp_plan, "tp_size": layout.tp_size}
    if expert_parallel:
        sizes["ep_size"] = layout.tp_size
    if layout.dp_size == 1:
        return DistributedConfig(**sizes)
    return ReplicatedGroups(**sizes, dp_replicate_size=layout.dp_size)
