"""The capture benchmark's output: row names, the ratio table and the machine description."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

#: Row names of the output table (tests look for these).
ROWS = (
    "bare_forward",
    "ours_capture",
    "routing_check",
    "nnsight_trace",
    "hf_router_logits_executemany",
    "tl_bridge_run_with_cache",
    "ingest_logits_fp16",
    "ingest_logits_fp32",
    "ingest_logits_none",
    "ingest_logits_fp16_coalesced",
    "ingest_logits_none_coalesced",
)


@dataclass
class Row:
    name: str
    seconds: float | None
    note: str


def fmt_ratio(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def render(rows: list[Row], bare: float, ours_s: float, ingest_rows: list[tuple[str, str, str, str]]) -> str:
    name_w = max(len(name) for name in ROWS) + 2
    lines = [f"{'row':<{name_w}}{'seconds':>10}{'/ bare':>10}{'/ ours':>10}  notes"]
    for r in rows:
        secs = "—" if r.seconds is None else f"{r.seconds:.2f}"
        lines.append(
            f"{r.name:<{name_w}}{secs:>10}{fmt_ratio(r.seconds, bare):>10}{fmt_ratio(r.seconds, ours_s):>10}  {r.note}"
        )
    if ingest_rows:
        lines.append("")
        lines.append(f"{'row':<{name_w}}{'rows/s':>12}{'bytes/row':>12}  notes")
        for name, rate, per_row, note in ingest_rows:
            lines.append(f"{name:<{name_w}}{rate:>12}{per_row:>12}  {note}")
    return "\n".join(lines)


def describe_machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__} threads={torch.get_num_threads()}"
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text
