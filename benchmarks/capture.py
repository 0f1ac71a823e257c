"""Capture overhead benchmark: our capture vs a bare forward vs the ways people do it today.

One synthetic workload (a random-init Qwen3-MoE-style model; prompts whose byte tokenisation is
exactly ``--tokens`` tokens, so no batch has padding) and one table of ratios:

1. ``ours_capture``: end-to-end ``workbench.capture.engine.capture`` into a fresh DuckDB file
   (routing records + fp16 router logits, tokens, NLL) ÷ ``bare_forward`` (``model_forward`` under
   ``torch.inference_mode`` on the same batches, no hooks). Both are timed ``--repeats`` times,
   interleaved (alternating order), after a warm-up; the ratio uses the minimum of each.
2. Baselines that write the same rows (prompt_id, position, layer, experts, weights, logits) to
   DuckDB: an nnsight trace, HF ``output_router_logits=True`` + Python lists + pandas +
   ``executemany`` (executemany timed on a subset and extrapolated), and a TransformerLens 4.x
   ``TransformerBridge.run_with_cache`` filtered to router hooks. Each runs once, timed per batch;
   the row reports median batch × batches (robust to CPU spikes on shared machines).
3. Ingest: ``Store.write_batch`` on prebuilt Arrow tables (≥ 1M token×layer rows by default) and
   bytes per token×layer on disk after CHECKPOINT, for logits fp16 / fp32 / none, in capture-sized
   writes (what ``capture`` does today) and in writes of ≥ 4 DuckDB row groups ("coalesced").

Run ``python benchmarks/capture.py --help``; the command that reproduces a table is printed with it.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import platform
import random
import shlex
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

#: Row names of the output table (tests look for these).
ROWS = (
    "bare_forward",
    "ours_capture",
    "nnsight_trace",
    "hf_router_logits_executemany",
    "tl_bridge_run_with_cache",
    "ingest_logits_fp16",
    "ingest_logits_fp32",
    "ingest_logits_none",
    "ingest_logits_fp16_coalesced",
    "ingest_logits_none_coalesced",
)

#: --quick: tiny sizes so every row runs in seconds (timings then mean little).
QUICK = {
    "prompts": 16,
    "tokens": 16,
    "hidden": 64,
    "layers": 2,
    "experts": 8,
    "top_k": 2,
    "moe_intermediate": 32,
    "heads": 4,
    "kv_heads": 2,
    "batch_size": 8,
    "repeats": 1,
    "ingest_rows": 20_000,
    "executemany_rows": 200,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--model-type", default="qwen3_moe", help="a transformers model_type (default qwen3_moe)")
    p.add_argument("--prompts", type=int, default=512)
    p.add_argument("--tokens", type=int, default=128, help="tokens per prompt, <bos> included")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--moe-intermediate", type=int, default=128, help="expert FFN width")
    p.add_argument("--heads", type=int, default=4, help="attention heads (head_dim = hidden/heads)")
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=320, help="vocabulary size (>= 259 for the byte tokenizer)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--repeats", type=int, default=5, help="interleaved timings of bare and ours")
    p.add_argument("--ingest-rows", type=int, default=1_048_576, help="token×layer rows for the ingest test")
    p.add_argument("--executemany-rows", type=int, default=2000, help="rows timed through executemany")
    p.add_argument(
        "--only-ours", action="store_true", help="skip the nnsight / HF / TransformerLens baselines"
    )
    p.add_argument("--skip-ingest", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="where DuckDB files go (default: a temp dir)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, every row, seconds (smoke test)")
    args = p.parse_args(argv)
    if args.quick:  # quick sizes replace the defaults, flags given explicitly still win
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    if args.vocab < 259:
        p.error("--vocab must be >= 259 (the byte tokenizer's ids)")
    return args


def reproduce_command(args: argparse.Namespace) -> str:
    """The full command line, every size spelled out, so it reproduces even if defaults change."""
    parts = ["python", "benchmarks/capture.py"]
    for key in (
        "model_type", "prompts", "tokens", "hidden", "layers", "experts", "top_k", "moe_intermediate",
        "heads", "kv_heads", "vocab", "batch_size", "device", "dtype", "repeats", "ingest_rows",
        "executemany_rows", "seed",
    ):  # fmt: skip
        parts += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    for flag in ("only_ours", "skip_ingest", "quick"):
        if getattr(args, flag):
            parts.append(f"--{flag.replace('_', '-')}")
    return shlex.join(parts)


# -- workload ----------------------------------------------------------------------------------


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    """A random-init MoE of ``--model-type`` with the requested sizes, on ``--device``/``--dtype``."""
    from workbench.models import tiny

    n = args.experts
    overrides = {
        "hidden_size": args.hidden,
        "num_hidden_layers": args.layers,
        "num_experts": n,
        "num_local_experts": n,
        "n_routed_experts": n,
        "moe_num_experts": n,
        "num_experts_per_tok": args.top_k,
        "moe_intermediate_size": args.moe_intermediate,
        "intermediate_size": args.moe_intermediate,
        "shared_expert_intermediate_size": args.moe_intermediate,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": args.hidden // args.heads,
        "vocab_size": args.vocab,
        "max_position_embeddings": max(512, args.tokens),
    }
    # tiny_model() refuses > 20M parameters (a guard for tests); build the same way without it,
    # directly on the target device so a ~1B-parameter GPU model initialises there.
    config = tiny.tiny_config(args.model_type, **overrides)
    cls = tiny.model_class(config)
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = cls._from_config(config)
    if not any(s in cls.__name__ for s in ("ForCausalLM", "ForConditionalGeneration", "LMHead")):
        model = tiny.TextLM(model).to(args.device)
    tiny.randomise_routers(model, args.seed)
    model.config.architectures = [type(model).__name__]  # the TransformerLens bridge needs it
    return model.to(dtype=getattr(torch, args.dtype), device=args.device).eval()


def make_prompts(args: argparse.Namespace, tokenizer: Any) -> list[Any]:
    """Prompts of ASCII text whose byte tokenisation (with <bos>) is exactly ``--tokens`` tokens."""
    from workbench.probefile import Prompt

    rng = random.Random(args.seed)
    words = ["the", "expert", "router", "token", "layer", "model", "code", "math", "cat", "sat", "on"]
    prompts = []
    for i in range(args.prompts):
        text = ""
        while len(text) < args.tokens - 1:
            text += rng.choice(words) + rng.choice(" ,.\n")
        text = text[: args.tokens - 1]
        prompts.append(Prompt(i, text, ("prose", "code", "math")[i % 3]))
    lengths = {len(ids) for ids in tokenizer([p.text for p in prompts])["input_ids"]}
    if lengths != {args.tokens}:
        raise SystemExit(f"prompt token counts {sorted(lengths)} != --tokens {args.tokens}")
    return prompts


def make_batches(args: argparse.Namespace, prompts: list[Any], tokenizer: Any) -> list[Any]:
    from workbench.capture.batching import make_batch

    out = []
    for start in range(0, len(prompts), args.batch_size):
        chunk = prompts[start : start + args.batch_size]
        out.append(make_batch(chunk, tokenizer, max_length=None, padding_side="right").to(args.device))
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn: Callable[[], Any]) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


# -- 1. bare forward and our capture -----------------------------------------------------------


def bare_forward(model: torch.nn.Module, batches: list[Any]) -> None:
    from workbench.models.forward import model_forward

    with torch.inference_mode():
        for batch in batches:
            model_forward(model, batch)


def ours(loaded: Any, prompts: list[Any], path: Path, args: argparse.Namespace, logits: str = "fp16") -> str:
    from workbench.capture.engine import CaptureOptions, capture

    path.unlink(missing_ok=True)
    path.with_name(path.name + ".wal").unlink(missing_ok=True)
    opts = CaptureOptions(batch_size=args.batch_size, logits=logits, backend="hooks")  # type: ignore[arg-type]
    return capture(loaded, prompts, path, options=opts, progress=False)


def count_routing(path: Path, table: str = "routing") -> int:
    import duckdb

    with duckdb.connect(str(path), read_only=True) as con:
        row = con.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


# -- 2. baselines: the same rows, written the ways people do it today ---------------------------

ROW_TABLE = (
    "CREATE TABLE routing (prompt_id INTEGER, position INTEGER, layer INTEGER, "
    "experts SMALLINT[], weights FLOAT[], logits FLOAT[])"
)


def fresh_db(path: Path) -> Any:
    import duckdb

    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    con.execute(ROW_TABLE)
    return con


def rows_frame(
    batch: Any, layer: int, logits: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor
) -> Any:
    """A pandas frame of one layer's rows (padding dropped) built the usual way: .cpu(), lists."""
    import pandas as pd

    keep = batch.mask.reshape(-1).bool().cpu()
    order = torch.argsort(weights.float(), dim=-1, descending=True)
    experts, weights = experts.gather(-1, order), weights.gather(-1, order)
    n_rows, width = batch.mask.shape
    pid = torch.tensor([p.prompt_id for p in batch.prompts]).repeat_interleave(width)
    pos = torch.arange(width).repeat(n_rows)
    return pd.DataFrame(
        {
            "prompt_id": pid[keep].tolist(),
            "position": pos[keep].tolist(),
            "layer": layer,
            "experts": experts.cpu()[keep].tolist(),
            "weights": weights.float().cpu()[keep].tolist(),
            "logits": logits.float().cpu()[keep].tolist(),
        }
    )


def insert_frame(con: Any, frame: Any) -> None:
    con.register("frame", frame)
    con.execute("INSERT INTO routing SELECT * FROM frame")
    con.unregister("frame")


def router_paths(loaded: Any) -> list[tuple[int, str]]:
    out = []
    for layer in loaded.layers:
        name = next(n for n, child in layer.block.named_children() if child is layer.router)
        out.append((layer.layer, f"{layer.path}.{name}"))
    return out


def envoy_at(root: Any, path: str) -> Any:
    node = root
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


class Clock:
    """Per-batch wall times of a single baseline run (synchronised on CUDA)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.laps: list[float] = []
        self._t = 0.0

    def start(self) -> None:
        sync(self.device)
        self._t = time.perf_counter()

    def lap(self) -> None:
        sync(self.device)
        self.laps.append(time.perf_counter() - self._t)

    @property
    def total(self) -> float:
        return sum(self.laps)

    @property
    def robust(self) -> float:
        """Median batch time × batches: a single run, minus other tenants' CPU spikes."""
        return float(np.median(self.laps)) * len(self.laps) if self.laps else 0.0


def nnsight_baseline(
    model: torch.nn.Module, loaded: Any, batches: list[Any], path: Path, clock: Clock
) -> int:
    """nnsight trace saving each router's output (logits, weights, indices), then pandas → DuckDB."""
    import nnsight

    traced = nnsight.NNsight(model)
    paths = router_paths(loaded)
    con = fresh_db(path)
    with torch.inference_mode():
        for batch in batches:
            clock.start()
            saved: list[Any] = []
            with traced.trace(
                input_ids=batch.input_ids,
                attention_mask=batch.mask,
                position_ids=batch.position_ids,
                use_cache=False,
            ):
                for _, router in paths:  # a plain loop: names bound in a comprehension don't come back
                    saved.append(nnsight.save(envoy_at(traced, router).output))
            for (layer, _), (logits, weights, experts) in zip(paths, saved, strict=True):
                insert_frame(con, rows_frame(batch, layer, logits, weights, experts))
            clock.lap()
    n = con.execute("SELECT count(*) FROM routing").fetchone()[0]  # type: ignore[index]
    con.close()
    return int(n)


def hf_baseline(
    model: torch.nn.Module, loaded: Any, batches: list[Any], path: Path, executemany_rows: int, clock: Clock
) -> tuple[float, int, int]:
    """HF output_router_logits=True → top-k in torch → Python row lists → pandas → executemany.

    ``clock`` gets forward + lists + DataFrame per batch. Returns (executemany seconds extrapolated
    to all rows, rows, rows actually inserted through executemany).
    """
    import pandas as pd

    cfg = model.config
    k, renorm = loaded.layers[0].top_k, bool(getattr(cfg, "norm_topk_prob", False))
    layer_ids = [layer.layer for layer in loaded.layers]
    columns = ["prompt_id", "position", "layer", "experts", "weights", "logits"]
    frames = []
    with torch.inference_mode():
        for batch in batches:
            clock.start()
            out = model(
                input_ids=batch.input_ids,
                attention_mask=batch.mask,
                position_ids=batch.position_ids,
                use_cache=False,
                output_router_logits=True,
            )
            width = batch.mask.shape[1]
            lengths = batch.mask.sum(dim=1).tolist()
            rows = []
            for layer, logits in zip(layer_ids, out.router_logits, strict=True):  # [B*T, E] each
                probs = torch.softmax(logits.float(), dim=-1)
                weights, experts = torch.topk(probs, k, dim=-1)
                if renorm:
                    weights = weights / weights.sum(dim=-1, keepdim=True)
                lg, w, e = logits.float().tolist(), weights.tolist(), experts.tolist()
                for r, prompt in enumerate(batch.prompts):
                    for t in range(int(lengths[r])):  # drop padding by hand
                        i = r * width + t
                        rows.append((prompt.prompt_id, t, layer, e[i], w[i], lg[i]))
            frames.append(pd.DataFrame(rows, columns=columns))
            clock.lap()
    n_rows = sum(len(f) for f in frames)
    con = fresh_db(path)
    subset = frames[0].head(executemany_rows).values.tolist()
    t0 = time.perf_counter()
    con.executemany("INSERT INTO routing VALUES (?, ?, ?, ?, ?, ?)", subset)
    per_row = (time.perf_counter() - t0) / max(1, len(subset))
    con.close()
    return per_row * n_rows, n_rows, len(subset)


def tl_baseline(
    model: torch.nn.Module, tokenizer: Any, loaded: Any, batches: list[Any], path: Path, clock: Clock
) -> tuple[int, str]:
    """TransformerLens 4.x TransformerBridge around the HF model; run_with_cache on router hooks only."""
    from transformer_lens.model_bridge import TransformerBridge

    tok = copy.deepcopy(tokenizer)
    # TL rebuilds the tokenizer from init_kwargs["name_or_path"] unless add_bos_token is set; a
    # tokenizer built in code has neither, so say it adds <bos> (it does, via its post-processor).
    tok.init_kwargs.setdefault("name_or_path", "byte-tokenizer")
    tok.init_kwargs["add_bos_token"] = True
    t0 = time.perf_counter()
    bridge = TransformerBridge.boot_transformers(
        model.config.architectures[0], hf_model=model, tokenizer=tok, device=str(batches[0].input_ids.device)
    )
    boot = time.perf_counter() - t0
    layer_ids = [layer.layer for layer in loaded.layers]
    wanted = ("gate.hook_out", "gate.hook_expert_weights", "gate.hook_expert_indices")
    con = fresh_db(path)
    with torch.inference_mode():
        for batch in batches:
            clock.start()
            _, cache = bridge.run_with_cache(
                batch.input_ids, attention_mask=batch.mask, names_filter=lambda name: name.endswith(wanted)
            )
            for i, layer in enumerate(layer_ids):
                logits = cache[f"blocks.{i}.mlp.gate.hook_out"]
                experts = cache[f"blocks.{i}.mlp.gate.hook_expert_indices"]
                dense = cache[f"blocks.{i}.mlp.gate.hook_expert_weights"]  # [N,E], zero off top-k
                weights = dense.gather(-1, experts)
                insert_frame(con, rows_frame(batch, layer, logits, weights, experts))
            clock.lap()
    n = con.execute("SELECT count(*) FROM routing").fetchone()[0]  # type: ignore[index]
    con.close()
    attn = getattr(model.config, "_attn_implementation", "?")
    return int(n), f"bridge forces attention {attn!r}; boot {boot:.2f}s not counted"


# -- 3. ingest ---------------------------------------------------------------------------------


def synthetic_tables(args: argparse.Namespace, logits_mode: str, n_batches: int) -> list[dict[str, Any]]:
    """Arrow tables shaped like one capture batch each (routing rows ordered prompt, position, layer)."""
    import pyarrow as pa

    rng = np.random.default_rng(args.seed)
    b, t, n_layers, n_exp, k = args.batch_size, args.tokens, args.layers, args.experts, args.top_k
    out = []
    for bi in range(n_batches):
        n = b * t
        prompt_ids = np.repeat(np.arange(bi * b, (bi + 1) * b, dtype=np.int32), t)
        positions = np.tile(np.arange(t, dtype=np.int32), b)
        logits = rng.standard_normal((n * n_layers, n_exp), dtype=np.float32)
        experts = np.argsort(-logits, axis=1)[:, :k].astype(np.int16)
        top = np.take_along_axis(logits, experts.astype(np.int64), axis=1)
        weights = np.exp(top - top.max(axis=1, keepdims=True))
        weights = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
        routing: dict[str, Any] = {
            "prompt_id": np.repeat(prompt_ids, n_layers),
            "position": np.repeat(positions, n_layers),
            "layer": np.tile(np.arange(n_layers, dtype=np.int32), n),
            "experts": _lists(experts, pa.int16()),
            "weights": _lists(weights, pa.float32()),
        }
        if logits_mode == "fp16":
            routing["logits"] = _lists(logits.astype(np.float16).astype(np.float32), pa.float32())
        elif logits_mode == "fp32":
            routing["logits"] = _lists(logits, pa.float32())
        else:
            routing["logits"] = pa.nulls(n * n_layers, pa.list_(pa.float32()))
        token_ids = rng.integers(3, 259, n, dtype=np.int32)
        out.append(
            {
                "prompts": pa.table(
                    {
                        "prompt_id": pa.array(np.arange(bi * b, (bi + 1) * b, dtype=np.int32)),
                        "text": pa.array(["x" * (t - 1)] * b),
                        "label": pa.array(["prose"] * b),
                        "n_tokens": pa.array(np.full(b, t, dtype=np.int32)),
                    }
                ),
                "tokens": pa.table(
                    {
                        "prompt_id": prompt_ids,
                        "position": positions,
                        "token_id": token_ids,
                        "token": pa.array([chr(97 + int(i) % 26) for i in token_ids]),
                        "nll": rng.random(n, dtype=np.float32) * 6,
                    }
                ),
                "routing": pa.table(routing),
            }
        )
    return out


def _lists(values: np.ndarray, value_type: Any) -> Any:
    import pyarrow as pa

    n, width = values.shape
    offsets = pa.array(np.arange(0, n * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=value_type))


#: DuckDB's row group size: an append of at least this many rows in one transaction is written
#: straight to the database file (no WAL, no later re-compression at checkpoint).
ROW_GROUP = 122_880


def ingest(
    args: argparse.Namespace, workdir: Path, logits_mode: str, prompts_per_write: int
) -> tuple[float, int, int, int]:
    """(seconds in write_batch, routing rows, file bytes after CHECKPOINT, rows per write)."""
    from workbench.store import Store

    sub = argparse.Namespace(**{**vars(args), "batch_size": prompts_per_write})
    rows_per_write = prompts_per_write * args.tokens * args.layers
    n_writes = max(1, -(-args.ingest_rows // rows_per_write))
    tables = synthetic_tables(sub, logits_mode, n_writes)
    path = workdir / f"ingest-{logits_mode}.duckdb"
    path.unlink(missing_ok=True)
    with Store(path) as store:
        layers = [
            {"layer": i, "module_path": f"model.layers.{i}.mlp", "n_experts": args.experts, "top_k": args.top_k,
             "n_shared": 0, "score_fn": "softmax"}
            for i in range(args.layers)
        ]  # fmt: skip
        run = store.create_run(
            model="synthetic", architecture="synthetic", probe="<benchmark>", n_experts=args.experts,
            top_k=args.top_k, config={"benchmark": "ingest", "logits": logits_mode}, layers=layers,
        )  # fmt: skip
        start = time.perf_counter()
        for t in tables:
            store.write_batch(run, prompts=t["prompts"], tokens=t["tokens"], routing=t["routing"])
        store.con.execute("CHECKPOINT")  # part of the cost: rows in the WAL are compressed here
        seconds = time.perf_counter() - start
        store.set_status(run, "complete")
        store.con.execute("CHECKPOINT")
        size = path.stat().st_size
        wal = path.with_name(path.name + ".wal")
        size += wal.stat().st_size if wal.exists() else 0
    path.unlink(missing_ok=True)
    return seconds, n_writes * rows_per_write, size, rows_per_write


def ingest_rows(args: argparse.Namespace, workdir: Path) -> list[tuple[str, str, str, str]]:
    """Per capture batch (what capture() writes today) for fp16/fp32/none, then coalesced writes."""
    per_prompt = args.tokens * args.layers
    # ≥ 4 DuckDB row groups per write (but not more than the whole ingest test)
    coalesced = max(args.batch_size, min(-(-4 * ROW_GROUP // per_prompt), -(-args.ingest_rows // per_prompt)))
    cases = [
        ("ingest_logits_fp16", "fp16", args.batch_size),
        ("ingest_logits_fp32", "fp32", args.batch_size),
        ("ingest_logits_none", "none", args.batch_size),
        ("ingest_logits_fp16_coalesced", "fp16", coalesced),
        ("ingest_logits_none_coalesced", "none", coalesced),
    ]
    out = []
    for name, mode, prompts_per_write in cases:
        seconds, n, size, per_write = ingest(args, workdir, mode, prompts_per_write)
        out.append(
            (
                name,
                f"{n / seconds:,.0f}",
                f"{size / n:.1f}",
                f"{n:,} rows in writes of {per_write:,} ({prompts_per_write} prompts) + tokens/prompts "
                f"tables, {seconds:.2f}s incl. final CHECKPOINT",
            )
        )
    return out


# -- the table -----------------------------------------------------------------------------------


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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    from workbench.models.loading import load_model
    from workbench.models.tiny import byte_tokenizer

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    print(f"# capture benchmark — {dt.datetime.now().isoformat(timespec='seconds')}")
    print(f"# machine: {describe_machine(args.device)}")
    print(f"# reproduce: {reproduce_command(args)}")
    tokenizer = byte_tokenizer()
    model = build_model(args)
    n_params = sum(p.numel() for p in model.parameters())
    loaded = load_model(model, tokenizer, name=f"random {args.model_type}")
    prompts = make_prompts(args, tokenizer)
    batches = make_batches(args, prompts, tokenizer)
    n_rows = args.prompts * args.tokens * len(loaded.layers)
    print(
        f"# workload: {type(model).__name__} {n_params / 1e6:.1f}M params, hidden {args.hidden}, "
        f"{len(loaded.layers)} MoE layers × {args.experts} experts top-{args.top_k}, "
        f"{args.prompts} prompts × {args.tokens} tokens (byte tokenizer, no padding), batch {args.batch_size}, "
        f"{args.device}/{args.dtype}; {n_rows:,} token×layer rows"
    )
    own_workdir = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="wb-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return _measure(args, model, loaded, tokenizer, prompts, batches, workdir, n_rows)
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _measure(
    args: argparse.Namespace,
    model: torch.nn.Module,
    loaded: Any,
    tokenizer: Any,
    prompts: list[Any],
    batches: list[Any],
    workdir: Path,
    n_rows: int,
) -> int:
    db = workdir / "ours.duckdb"

    # warm up: kernels, allocator, DuckDB, the writer thread
    warm_n = min(len(prompts), 2 * args.batch_size)
    bare_forward(model, batches[:2])
    ours(loaded, prompts[:warm_n], db, args)

    bare_t: list[float] = []
    ours_t: list[float] = []
    for r in range(args.repeats):
        steps = [
            ("bare", lambda: bare_forward(model, batches)),
            ("ours", lambda: ours(loaded, prompts, db, args)),
        ]
        for which, fn in steps if r % 2 == 0 else steps[::-1]:
            seconds, _ = timed(args.device, fn)
            (bare_t if which == "bare" else ours_t).append(seconds)
        print(f"#   repeat {r + 1}: bare {bare_t[-1]:.2f}s  ours {ours_t[-1]:.2f}s", flush=True)
    got = count_routing(db)
    if got != n_rows:
        raise SystemExit(f"our capture wrote {got} routing rows, expected {n_rows}")
    bare, ours_s = min(bare_t), min(ours_t)
    rows = [
        Row("bare_forward", bare, f"model_forward, inference_mode, no hooks; min of {args.repeats}"),
        Row(
            "ours_capture",
            ours_s,
            f"capture() → DuckDB, hooks backend, fp16 logits + tokens + NLL; min of {args.repeats} "
            f"(median ratio {np.median(ours_t) / np.median(bare_t):.2f}x); {got:,} rows",
        ),
    ]
    if args.only_ours:
        rows.append(Row("nnsight_trace", None, "skipped (--only-ours)"))
        rows.append(Row("hf_router_logits_executemany", None, "skipped (--only-ours)"))
        rows.append(Row("tl_bridge_run_with_cache", None, "skipped (--only-ours)"))
    else:
        rows += run_baselines(args, loaded, tokenizer, batches, workdir, n_rows)

    ingest = [] if args.skip_ingest else ingest_rows(args, workdir)
    print()
    print(render(rows, bare, ours_s, ingest))
    print()
    print(f"reproduce: {reproduce_command(args)}")
    return 0


def run_baselines(
    args: argparse.Namespace, loaded: Any, tokenizer: Any, batches: list[Any], workdir: Path, n_rows: int
) -> list[Row]:
    """Each baseline once, on its own copy of the model (the TL bridge modifies a model in place)."""
    from workbench.models.loading import load_model

    def rows_note(n: int) -> str:
        return f"{n:,} rows" + ("" if n == n_rows else f" (expected {n_rows:,})")

    def timing(clock: Clock) -> str:
        return f"median batch × {len(clock.laps)} (raw total {clock.total:.2f}s)"

    out = []
    clock = Clock(args.device)
    try:
        n = nnsight_baseline(copy.deepcopy(loaded.model), loaded, batches, workdir / "nnsight.duckdb", clock)
        note = f"NNsight.trace, save router outputs, pandas → DuckDB; {timing(clock)}; {rows_note(n)}"
        out.append(Row("nnsight_trace", clock.robust, note))
    except Exception as exc:  # report, don't hide the other rows
        out.append(Row("nnsight_trace", None, f"failed: {type(exc).__name__}: {str(exc)[:200]}"))

    clock = Clock(args.device)
    try:
        model = copy.deepcopy(loaded.model)
        em, n, timed_rows = hf_baseline(
            model, loaded, batches, workdir / "hf.duckdb", args.executemany_rows, clock
        )
        note = (
            f"EXTRAPOLATED: forward+lists+pandas {clock.robust:.2f}s ({timing(clock)}) + executemany "
            f"{em:.1f}s extrapolated from {timed_rows:,} of {n:,} rows ({n / em if em else 0:,.0f} rows/s)"
        )
        out.append(Row("hf_router_logits_executemany", clock.robust + em, note))
    except Exception as exc:
        out.append(
            Row("hf_router_logits_executemany", None, f"failed: {type(exc).__name__}: {str(exc)[:200]}")
        )

    clock = Clock(args.device)
    try:
        model = copy.deepcopy(loaded.model)
        n, how = tl_baseline(
            model, tokenizer, load_model(model, tokenizer), batches, workdir / "tl.duckdb", clock
        )
        note = f"TransformerBridge.run_with_cache(names_filter=router hooks), pandas → DuckDB; {how}; {timing(clock)}; {rows_note(n)}"
        out.append(Row("tl_bridge_run_with_cache", clock.robust, note))
    except Exception as exc:
        out.append(
            Row("tl_bridge_run_with_cache", None, f"not built: {type(exc).__name__}: {str(exc)[:200]}")
        )
    return out


if __name__ == "__main__":
    sys.exit(main())
