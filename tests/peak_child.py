"""Child process for the peak-memory test (``test_peak_rss_is_flat_from_n_to_4n_prompts`` in
tests/test_capture_memory.py): captures runs of several sizes, one after another, and prints
``[[prompts, peak MiB], ...]`` as JSON on its last line.

Each run gets a fresh store; the peak is the kernel's high-water mark (``VmHWM``), reset just before
the capture starts (``/proc/self/clear_refs``), so the startup (torch, the model) is not in it. A
first run of the smallest size warms the process up (allocator arenas, DuckDB's and Arrow's pools,
lazily imported modules) and is not reported.

Usage: python tests/peak_child.py FOLDER TEXT_BYTES STORE_MIB N [N ...]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from workbench.capture.engine import capture
from workbench.models.loading import load_model
from workbench.models.tiny import byte_tokenizer, tiny_model
from workbench.probefile import Prompt

#: characters of each text the tokenizer reads (module docstring of the test: why not all of them)
READ_CHARS = 24


class PrefixTokenizer:
    """The byte tokenizer on the first :data:`READ_CHARS` characters of each text.

    Hugging Face's tokenizers spend about 0.5 s per MB of text on offset bookkeeping, so long texts
    through the real one would take minutes; the store still receives every text whole.
    """

    def __init__(self) -> None:
        self._inner = byte_tokenizer()

    def __call__(self, text: str) -> Any:
        return self._inner(text[:READ_CHARS])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmHWM line")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set to the current one


def _prompts(n: int, text_bytes: int) -> Iterator[Prompt]:
    body = "".join(chr(97 + (i * 7) % 26) for i in range(text_bytes))
    for i in range(n):  # a generator: the prompts stream, as from a probe file
        yield Prompt(prompt_id=i, text=f"{i:08d} {body}", label=f"L{i % 5}")


def main(folder: Path, text_bytes: int, store_mib: int, sizes: list[int]) -> list[tuple[int, float]]:
    torch.set_num_threads(1)
    model = tiny_model(
        "qwen2_moe",
        hidden_size=32,
        intermediate_size=32,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=16,
        num_hidden_layers=2,
    )
    loaded = load_model(model, PrefixTokenizer())
    peaks: list[tuple[int, float]] = []
    for step, n in enumerate([sizes[0], *sizes]):
        _reset_peak()
        capture(
            loaded,
            _prompts(n, text_bytes),
            folder / f"run{step}.duckdb",
            progress=False,
            batch_size=4,
            write_rows=64,
            store_memory_mib=store_mib,
        )
        if step:
            peaks.append((n, _peak_mib()))
    return peaks


if __name__ == "__main__":
    where, text, mib, *ns = sys.argv[1:]
    print(json.dumps(main(Path(where), int(text), int(mib), [int(n) for n in ns])), flush=True)
