"""Writer benchmark: replay GPU-shaped record batches through capture's real writer path, no model.

On a GPU the forward pass is so fast that capture is bound by its writer thread (benchmarks/README.md:
5.6x a bare forward on an H200). This script stands for that situation on a CPU box. It builds the
host-side batches that ``workbench.capture.packing.to_host`` hands to the writer (a ``HostBatch``:
real tokens only, top-k expert ids in descending weight as int16, their weights as a bf16 model applies
them (shipped as float32) and, with logits, the ``[n, E]`` router logits rounded to fp16 and shipped as
half, exactly as ``to_host`` does) from
numpy, with realistic prompt lengths. It then replays them through the same wiring as
``workbench.capture.engine._run``: a ``StreamingWriter`` whose sink runs ``to_arrow`` and a
``WriteBuffer`` that coalesces batches into ``Store.write_batch`` transactions, into a fresh store.

A producer thread plays the compute thread. It either puts batches as fast as the writer takes them
(unthrottled: the sustained writer rate, hence the largest forward rate it keeps up with), or sleeps
until each batch's forward would have finished at ``rate`` tokens/s (throttled: a GPU's compute thread
mostly waits on the device, so a sleep stands for it), and then records how far it fell behind.

Printed per case (E, logits): sustained token×layer rows/s, bytes per row counting every file the
store leaves in its directory (the .duckdb file, a WAL, any shards; tokens and prompts included),
the largest forward rate in tokens/s (= sustained rows/s / layers), and the throttled check(s).

``python benchmarks/writer.py --help``; ``--quick`` runs tiny sizes in seconds.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from workbench.capture.batching import Batch  # noqa: E402
from workbench.capture.coalesce import WriteBuffer  # noqa: E402
from workbench.capture.engine import CaptureOptions  # noqa: E402
from workbench.capture.packing import HostBatch, to_arrow  # noqa: E402
from workbench.capture.progress import TokenProgress  # noqa: E402
from workbench.capture.writer import StreamingWriter  # noqa: E402
from workbench.probefile import Prompt  # noqa: E402
from workbench.store import Store  # noqa: E402

#: --quick: tiny sizes, every case and field, seconds (tests/test_writer_benchmark.py runs this).
QUICK = {"experts": "8,16", "rows": 20_000, "batch_size": 8, "mean_tokens": 24, "max_tokens": 64, "pool": 2}

#: Field names of each result line, in order (the smoke test parses these).
FIELDS = (
    "case",
    "rows",
    "rows/s",
    "rows/cpu_s",
    "bytes/row",
    "target_B/row",
    "max_fwd_tok/s",
    "check_tok/s",
    "lag",
    "wall/ideal",
    "keeps_up",
)

#: Words for prompt texts and token strings (English-like, so compression sees realistic text).
_WORDS_TEXT = (
    "the of and to in is that for it as with was on be by this are from at or an which have not has "
    "model expert router token layer weight logit prompt capture store batch write read value sample"
)
WORDS: tuple[str, ...] = tuple(_WORDS_TEXT.split())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--experts", default="48,128,256", help="comma-separated expert counts E")
    p.add_argument("--logits", default="fp16,none", help="comma-separated logits modes (fp16, fp32, none)")
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--layers", type=int, default=4, help="MoE layers per token (the H200 workload had 4)")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per forward batch")
    p.add_argument("--mean-tokens", type=int, default=128, help="mean prompt length (log-normal)")
    p.add_argument("--max-tokens", type=int, default=512, help="prompt lengths are clipped to [4, this]")
    p.add_argument("--vocab", type=int, default=32_000, help="token ids (Zipf-distributed) and strings")
    p.add_argument("--rows", type=int, default=2_097_152, help="token×layer rows per case (at least)")
    p.add_argument("--pool", type=int, default=4, help="distinct prebuilt batches, replayed in turn")
    p.add_argument(
        "--rate",
        type=float,
        action="append",
        default=None,
        help="forward rate in tokens/s to check (repeatable); default: --confirm x the measured maximum",
    )
    p.add_argument("--confirm", type=float, default=0.9, help="check the maximum at this fraction of it")
    p.add_argument("--no-check", action="store_true", help="only the unthrottled run")
    p.add_argument(
        "--tolerance", type=float, default=1.15, help="keeps up: compute ends <= this x its forward time"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="where stores go (default: a temp dir)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds (smoke test)")
    args = p.parse_args(argv)
    if args.quick:  # quick sizes replace the defaults, flags given explicitly still win
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    args.experts = [int(e) for e in str(args.experts).split(",")]
    args.logits = [m.strip() for m in str(args.logits).split(",")]
    for mode in args.logits:
        if mode not in ("fp16", "fp32", "none"):
            p.error(f"--logits: unknown mode {mode!r}")
    if any(e < args.top_k for e in args.experts):
        p.error("every E must be >= --top-k")
    return args


def reproduce_command(args: argparse.Namespace) -> str:
    """The full command line with every size spelled out."""
    parts = ["python", "benchmarks/writer.py"]
    parts += ["--experts", ",".join(map(str, args.experts)), "--logits", ",".join(args.logits)]
    for key in ("top_k", "layers", "batch_size", "mean_tokens", "max_tokens", "vocab", "rows", "pool"):
        parts += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    for rate in args.rate or []:
        parts += ["--rate", f"{rate:g}"]
    parts += [
        "--confirm",
        f"{args.confirm:g}",
        "--tolerance",
        f"{args.tolerance:g}",
        "--seed",
        str(args.seed),
    ]
    if args.no_check:
        parts.append("--no-check")
    return shlex.join(parts)


# -- GPU-shaped batches --------------------------------------------------------------------------
class VocabTokenizer:
    """The one tokenizer method ``to_arrow`` calls, over a synthetic ``vocab``-sized vocabulary.

    A real fast tokenizer's ``convert_ids_to_tokens`` is a Python loop of ``id_to_token`` calls; this
    is a list lookup per id, so the writer does comparable per-token work with realistic strings.
    """

    def __init__(self, vocab: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        pieces = rng.choice(WORDS, size=vocab)
        self.vocab = [("Ġ" if i % 3 else "") + w[: 1 + i % len(w)] for i, w in enumerate(pieces)]

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        vocab = self.vocab
        return [vocab[i] for i in ids]


@dataclass
class Shape:
    """One prebuilt batch's tensors (what ``to_host`` leaves on the host), reused with new prompt ids."""

    lengths: list[int]
    texts: list[str]
    token_ids: torch.Tensor
    nll: torch.Tensor
    indices: list[torch.Tensor]
    weights: list[torch.Tensor]
    logits: list[torch.Tensor | None]

    @property
    def n_tokens(self) -> int:
        return sum(self.lengths)


def prompt_lengths(rng: np.random.Generator, n: int, mean: int, cap: int) -> list[int]:
    """Log-normal lengths with the given mean (sigma 0.8: a few long prompts, many short ones)."""
    sigma = 0.8
    mu = np.log(mean) - sigma**2 / 2
    return [int(x) for x in np.clip(rng.lognormal(mu, sigma, n).round(), 4, cap)]


def build_shape(args: argparse.Namespace, n_experts: int, mode: str, rng: np.random.Generator) -> Shape:
    """One batch: top-k of random router logits in descending weight, softmax weights over the top-k."""
    lengths = prompt_lengths(rng, args.batch_size, args.mean_tokens, args.max_tokens)
    n, k = sum(lengths), args.top_k
    texts = [" ".join(rng.choice(WORDS, size=max(1, int(t * 0.75)))) for t in lengths]
    token_ids = np.minimum(rng.zipf(1.3, n), args.vocab) - 1
    nll = (rng.gamma(2.0, 1.2, n)).astype(np.float32)
    nll[np.cumsum(lengths) - 1] = np.nan  # the last token of each prompt has no next token
    bias = rng.standard_normal(n_experts).astype(np.float32)  # some experts are busier than others
    indices, weights, logits = [], [], []
    for _ in range(args.layers):
        raw = (rng.standard_normal((n, n_experts), dtype=np.float32) * 2.0 + bias).astype(np.float32)
        top = np.argpartition(-raw, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(raw, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        chosen = np.take_along_axis(raw, top, axis=1)
        w = np.exp(chosen - chosen[:, :1])
        indices.append(torch.from_numpy(top.astype(np.int16)))
        # the weights a bf16 model applies (what capture records), shipped as float32 by to_host
        weights.append(
            torch.from_numpy((w / w.sum(axis=1, keepdims=True)).astype(np.float32)).bfloat16().float()
        )
        if mode == "fp16":  # to_host rounds on the device and ships half
            logits.append(torch.from_numpy(raw.astype(np.float16)))
        elif mode == "fp32":
            logits.append(torch.from_numpy(raw))
        else:
            logits.append(None)
    return Shape(
        lengths, texts, torch.from_numpy(token_ids.astype(np.int64)), torch.from_numpy(nll),
        indices, weights, logits,
    )  # fmt: skip


def host_batch(shape: Shape, first_prompt_id: int, layers: list[int]) -> HostBatch:
    """A ``HostBatch`` over ``shape``'s tensors whose prompts get fresh ids (a run refuses repeats)."""
    prompts = [
        Prompt(prompt_id=first_prompt_id + i, text=text, label=("prose", "code", "math")[i % 3])
        for i, text in enumerate(shape.texts)
    ]
    width = max(shape.lengths)
    empty = torch.empty((len(prompts), width), dtype=torch.long)  # never read by to_arrow
    batch = Batch(prompts, empty, empty, empty, shape.lengths, torch.empty(0, dtype=torch.long))
    return HostBatch(
        batch=batch, layers=layers, token_ids=shape.token_ids, nll=shape.nll, indices=shape.indices,
        weights=shape.weights, logits=shape.logits, stats=None, event=None,
    )  # fmt: skip


# -- one replay ------------------------------------------------------------------------------------
_FLUSH = object()


@dataclass
class Replay:
    """What one replay measured."""

    rows: int
    tokens: int
    put_done: float  # seconds from start until the producer handed off its last batch
    drained: float  # ... until the writer committed everything (StreamingWriter.close returned)
    closed: float  # ... until the store was closed (DuckDB checkpoints at close)
    cpu: float  # process CPU seconds (all threads) until drained: robust to other tenants of the box
    ideal: float | None  # forward time at the throttled rate (None: unthrottled)
    bytes_on_disk: int

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.drained


def dir_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (the store, its WAL, any shards)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def replay(
    args: argparse.Namespace, shapes: list[Shape], n_experts: int, rate: float | None, where: Path
) -> Replay:
    """Replay batches until ``args.rows`` rows through capture's writer wiring into a fresh store."""
    opts = CaptureOptions()
    layers = list(range(args.layers))
    tokenizer = VocabTokenizer(args.vocab, args.seed)
    plan: list[HostBatch] = []
    rows = tokens = 0
    while rows < args.rows:
        shape = shapes[len(plan) % len(shapes)]
        plan.append(host_batch(shape, len(plan) * args.batch_size, layers))
        tokens += shape.n_tokens
        rows += shape.n_tokens * args.layers
    if where.exists():
        shutil.rmtree(where)
    where.mkdir(parents=True)
    store = Store(where / "capture.duckdb")
    run = store.create_run(
        model="synthetic", architecture="replay", probe="<writer benchmark>", n_experts=n_experts,
        top_k=args.top_k, config={"benchmark": "writer"},
        layers=[
            {"layer": i, "module_path": f"model.layers.{i}.mlp", "n_experts": n_experts,
             "top_k": args.top_k, "n_shared": 0, "score_fn": "softmax"}
            for i in layers
        ],
    )  # fmt: skip

    # the sink of workbench.capture.engine._run, verbatim in behaviour
    def write(tables: dict[str, Any]) -> None:
        store.write_batch(
            run, prompts=tables["prompts"], tokens=tables["tokens"], routing=tables["routing"],
            expert_stats=tables["expert_stats"],
        )  # fmt: skip

    buffer = WriteBuffer(write, max_rows=opts.write_rows)
    bar = TokenProgress(enabled=False)

    def sink(host: Any) -> None:
        if host is _FLUSH:
            buffer.flush()
            return
        buffer.add(to_arrow(host, tokenizer))
        bar.advance(host.batch.n_tokens, len(host.batch.prompts))

    writer = StreamingWriter(sink, max_pending=opts.max_pending)
    start, cpu = time.perf_counter(), time.process_time()
    done_tokens = 0
    for host in plan:
        done_tokens += host.batch.n_tokens
        if rate is not None:  # the forward of this batch ends at its scheduled time
            wait = start + done_tokens / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        writer.put(host)
    writer.put(_FLUSH)
    put_done = time.perf_counter() - start
    writer.close()
    drained, cpu = time.perf_counter() - start, time.process_time() - cpu
    store.set_status(run, "complete")
    store.close()
    closed = time.perf_counter() - start
    size = dir_bytes(where)
    shutil.rmtree(where)
    ideal = None if rate is None else tokens / rate
    return Replay(rows, tokens, put_done, drained, closed, cpu, ideal, size)


# -- cases -------------------------------------------------------------------------------------------
def run_case(args: argparse.Namespace, n_experts: int, mode: str, workdir: Path) -> list[dict[str, str]]:
    """The unthrottled run, then the throttled checks, of one (E, logits) case."""
    rng = np.random.default_rng([args.seed, n_experts])
    shapes = [build_shape(args, n_experts, mode, rng) for _ in range(args.pool)]
    name = f"e{n_experts}_{mode}"
    where = workdir / name
    free = replay(args, shapes, n_experts, None, where)
    max_tok = free.rows_per_s / args.layers
    target = 2 * n_experts + 24
    common = {
        "case": name,
        "rows": f"{free.rows:,}",
        "bytes/row": f"{free.bytes_on_disk / free.rows:.1f}",
        "target_B/row": str(target),
        "max_fwd_tok/s": f"{max_tok:,.0f}",
    }
    out = [
        {
            **common,
            "rows/s": f"{free.rows_per_s:,.0f}",
            "rows/cpu_s": f"{free.rows / free.cpu:,.0f}",
            "check_tok/s": "unthrottled",
            "lag": "—",
            "wall/ideal": "—",
            "keeps_up": "—",
        }
    ]
    rates = [] if args.no_check else (args.rate or [args.confirm * max_tok])
    for rate in rates:
        r = replay(args, shapes, n_experts, rate, where)
        assert r.ideal is not None
        lag = r.put_done / r.ideal  # how far the compute thread fell behind its forward schedule
        out.append(
            {
                **common,
                "rows/s": f"{r.rows_per_s:,.0f}",
                "rows/cpu_s": f"{r.rows / r.cpu:,.0f}",
                "bytes/row": f"{r.bytes_on_disk / r.rows:.1f}",
                "check_tok/s": f"{rate:,.0f}",
                "lag": f"{lag:.2f}x",
                "wall/ideal": f"{r.closed / r.ideal:.2f}x",
                "keeps_up": "yes" if lag <= args.tolerance else "no",
            }
        )
    return out


def render(results: list[dict[str, str]]) -> str:
    """A fixed-width table with :data:`FIELDS` as its header."""
    widths = {f: max(len(f), *(len(r[f]) for r in results)) for f in FIELDS}
    lines = ["  ".join(f"{f:>{widths[f]}}" if i else f"{f:<{widths[f]}}" for i, f in enumerate(FIELDS))]
    for r in results:
        lines.append(
            "  ".join(f"{r[f]:>{widths[f]}}" if i else f"{r[f]:<{widths[f]}}" for i, f in enumerate(FIELDS))
        )
    return "\n".join(lines)


def machine() -> str:
    """Cores, load average and library versions: timings on a shared box need this context."""
    import os

    import duckdb
    import pyarrow

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPU cores, load average {load}; duckdb {duckdb.__version__}, "
        f"pyarrow {pyarrow.__version__}, torch {torch.__version__}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"# reproduce: {reproduce_command(args)}")
    print(f"# machine: {machine()}")
    print(
        f"# workload: {args.layers} MoE layers, top-{args.top_k}, {args.batch_size} prompts per batch, "
        f"log-normal prompt lengths (mean {args.mean_tokens}, clipped to [4, {args.max_tokens}]), "
        f">= {args.rows:,} token×layer rows per case; writer path = StreamingWriter → to_arrow → "
        "WriteBuffer → Store.write_batch (capture's defaults)"
    )
    print(
        "# rows/s: rows ÷ seconds until the writer drained; rows/cpu_s: rows ÷ CPU seconds of this process "
        "(all threads) until then, which other tenants of a shared box disturb far less; bytes/row: every file in the store's "
        "directory after close; max_fwd_tok/s = unthrottled rows/s ÷ layers; lag: when the compute "
        "thread handed off its last batch ÷ its forward time at check_tok/s; wall/ideal also counts the "
        f"drain and the store's close; keeps_up: lag <= {args.tolerance:g}"
    )
    tmp = None
    workdir = args.workdir
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="moe-writer-bench-")
        workdir = Path(tmp.name)
    results: list[dict[str, str]] = []
    try:
        for n_experts in args.experts:
            for mode in args.logits:
                results.extend(run_case(args, n_experts, mode, workdir))
                print(f"# done e{n_experts}_{mode}", file=sys.stderr, flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
