"""What shapes a capture: :class:`CaptureOptions`, checked when made, stored in ``runs.config``.

Resume rebuilds the options from the run's config, so every field here is something a run must
repeat exactly; a contradiction (``device`` with ``device_map``, ``sample`` without ``generate``)
is refused when the options are made, before a model loads or a run exists.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from workbench.capture.coalesce import DEFAULT_WRITE_ROWS
from workbench.capture.modes import DEFAULT_LOGITS_MODE, LogitsMode, logits_mode
from workbench.models.loading import parse_device_map
from workbench.store.memory import MIN_MEMORY_MIB

#: DuckDB's share of a capture's memory: its writes are a coalesced batch's prompts and tokens
DEFAULT_STORE_MEMORY_MIB = 256


@dataclass(frozen=True)
class CaptureOptions:
    """Everything that shapes a run's records; stored in ``runs.config`` so resume can repeat it."""

    batch_size: int = 16
    max_length: int | None = None
    logits: LogitsMode = DEFAULT_LOGITS_MODE
    expert_stats: bool = False
    backend: str = "hooks"
    device: str | None = None
    dtype: str | None = None
    padding_side: str | None = None
    max_pending: int = 2
    #: routing rows per store write (several batches coalesced; see capture/coalesce.py)
    write_rows: int = DEFAULT_WRITE_ROWS
    #: skip the load-time routing self-check (models/routing_check.py); recorded in the run's config
    skip_routing_check: bool = False
    #: transformers' device_map for a model larger than one device: a strategy ("auto", "balanced",
    #: "sequential") or a JSON object of module name → device; excludes ``device``
    device_map: str | None = None
    #: where ``"disk"`` entries of the device map keep their weights
    offload_folder: str | None = None
    #: tensor parallel across the ranks of a torchrun job: "auto" (the model's own plan), or None
    tp_plan: str | None = None
    #: record NaN/inf router outputs instead of stopping the capture (capture/finite.py); flags the run
    allow_nonfinite: bool = False
    #: ranks per tensor-parallel group (None: one group of all ranks); WORLD_SIZE / tp_size groups
    #: split the prompts data-parallel. Implies ``tp_plan="auto"``.
    tp_size: int | None = None
    #: also split each MoE block's experts over the ranks of a tensor-parallel group (transformers'
    #: expert parallelism, ep_size = the group's size). Implies ``tp_plan="auto"``.
    expert_parallel: bool = False
    #: DuckDB's memory limit while the capture writes, in MiB (store/memory.py): it would otherwise
    #: cache every block written, so the process grew with the run rather than with the batch
    store_memory_mib: int = DEFAULT_STORE_MEMORY_MIB
    #: continue each prompt by up to this many generated tokens and record prompt and response
    #: (capture/generation.py); 0 reads the prompts only
    generate: int = 0
    #: sample the continuation instead of taking the argmax (with ``seed``, ``temperature``, ``top_p``)
    sample: bool = False
    #: the sampling seed; each prompt draws from its own generator seeded from it and its prompt id
    seed: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    #: put each prompt in the tokenizer's chat template (a user turn, then the assistant's turn opened)
    chat: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if self.write_rows < 1:
            raise ValueError(f"write_rows must be >= 1, got {self.write_rows}")
        if self.store_memory_mib < MIN_MEMORY_MIB:
            raise ValueError(f"store_memory_mib must be >= {MIN_MEMORY_MIB}, got {self.store_memory_mib}")
        logits_mode(self.logits)  # raises ValueError naming the modes
        if self.tp_size is not None and self.tp_size < 2:
            raise ValueError(
                f"tp_size must be >= 2 (ranks per tensor-parallel group), got {self.tp_size}; for a whole model "
                "on every rank, capture data-parallel without tp_size"
            )
        if (self.tp_size is not None or self.expert_parallel) and self.tp_plan is None:
            object.__setattr__(self, "tp_plan", "auto")  # groups of tp_size ranks shard with the model's plan
        if self.expert_parallel and self.expert_stats:
            raise ValueError(
                "expert_stats recompute expert outputs from the expert weights, which expert parallelism splits "
                "across ranks: capture without one of them"
            )
        if self.tp_plan not in (None, "auto"):
            raise ValueError(f"tp_plan must be 'auto' (the model's own plan) or None, got {self.tp_plan!r}")
        if self.tp_plan is not None and (self.device is not None or self.device_map is not None):
            raise ValueError("tp_plan places the model on the ranks' devices: give no device or device_map")
        if self.device_map is not None:
            parse_device_map(self.device_map)  # raises ModelLoadError naming what is wrong
            if self.device is not None:
                raise ValueError("give device or device_map, not both: the map places every module")
            if self.backend == "transformer_lens":
                raise ValueError(
                    "device_map works with the hooks and nnsight backends; TransformerLens' bridge is not "
                    "tested on a divided model, so it is refused rather than trusted"
                )
        self._check_generation()

    def _check_generation(self) -> None:
        if self.generate < 0:
            raise ValueError(
                f"generate must be >= 0 (new tokens per prompt; 0: read the prompts only), got {self.generate}"
            )
        if not self.sample and (self.temperature != 1.0 or self.top_p != 1.0):
            raise ValueError(
                "temperature and top_p shape sampling: add sample=True (--sample), or leave them out"
            )
        if self.sample and self.generate == 0:
            raise ValueError(
                "sample=True (--sample) samples generated tokens: give generate=N (--generate N) too"
            )
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.generate and self.tp_plan is not None:
            raise ValueError(
                "generate is not supported under tensor parallelism (tp_plan, tp_size, expert_parallel): it has "
                "not been tested there; capture data-parallel (torchrun without --tp-plan) or in one process"
            )
        if self.generate and self.backend == "transformer_lens":
            raise ValueError(
                "generate works with the hooks and nnsight backends; TransformerLens' bridge replaces the "
                "model's forward, which generation is not tested on: use --backend hooks"
            )


def merge_options(options: CaptureOptions | None, overrides: dict[str, Any]) -> CaptureOptions:
    opts = options or CaptureOptions()
    return CaptureOptions(**{**asdict(opts), **overrides}) if overrides else opts


def placement(opts: CaptureOptions) -> dict[str, Any]:
    """``load_model``'s device, dtype and device-map arguments from the run's options."""
    return {
        "device": opts.device,
        "dtype": opts.dtype,
        "device_map": parse_device_map(opts.device_map) if opts.device_map is not None else None,
        "offload_folder": opts.offload_folder,
        "tp_plan": opts.tp_plan,
        "tp_size": opts.tp_size,
        "expert_parallel": opts.expert_parallel,
    }
