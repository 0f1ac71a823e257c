"""Capture overhead benchmark: our capture vs a bare forward vs the ways people do it today.

One synthetic workload (a random-init Qwen3-MoE-style model; prompts whose byte tokenisation is
exactly ``--tokens`` tokens, so no batch has padding) and one table of ratios:

1. ``ours_capture``: end-to-end ``workbench.capture.engine.capture`` into a fresh DuckDB file
   (routing records + fp16 router logits, tokens, NLL) ÷ ``bare_forward`` (``model_forward`` under
   ``torch.inference_mode`` on the same batches, no hooks). Both are timed ``--repeats`` times,
   interleaved (alternating order), after a warm-up; the ratio uses the minimum of each.
   ``routing_check``: the load-time routing self-check capture runs once per model before its first
   batch (every MoE block class, ablation on random tokens), min of ``--repeats``; its ``/ ours``
   ratio is its share of one capture (timed captures reuse the verified model, so exclude it).
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
import datetime as dt
import random
import shlex
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

# siblings are imported as the `benchmarks` package (found through ROOT above when run as a script)
from benchmarks.baselines import run_baselines  # noqa: E402
from benchmarks.ingest_bench import ingest_rows  # noqa: E402
from benchmarks.report import Row, describe_machine, render  # noqa: E402
from benchmarks.timing import timed  # noqa: E402

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


# -- 1. bare forward and our capture -----------------------------------------------------------


def bare_forward(model: torch.nn.Module, batches: list[Any]) -> None:
    from workbench.models.forward import model_forward

    with torch.inference_mode():
        for batch in batches:
            model_forward(model, batch)


def ours(loaded: Any, prompts: list[Any], path: Path, args: argparse.Namespace, logits: str = "fp16") -> str:
    from workbench.capture.engine import CaptureOptions, capture
    from workbench.store import remove_store

    remove_store(path)
    opts = CaptureOptions(batch_size=args.batch_size, logits=logits, backend="hooks")  # type: ignore[arg-type]
    return capture(loaded, prompts, path, options=opts, progress=False)


def count_routing(path: Path, table: str = "routing") -> int:
    import duckdb

    with duckdb.connect(str(path), read_only=True) as con:
        shards = path.with_name(path.name + ".shards")  # a store's routing view reads its shards from here
        con.execute(f"SET file_search_path = '{shards}'")
        row = con.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


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
    from workbench.models.routing_check import check_routing

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
    check_t = [
        timed(args.device, lambda: check_routing(model, loaded.layers, force=True))[0]
        for _ in range(args.repeats)
    ]
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
        Row(
            "routing_check",
            min(check_t),
            f"check_routing(force=True) on {len({type(x.block) for x in loaded.layers})} block class(es); "
            f"min of {args.repeats} = {100 * min(check_t) / ours_s:.2f}% of ours_capture; once per model",
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


if __name__ == "__main__":
    sys.exit(main())
