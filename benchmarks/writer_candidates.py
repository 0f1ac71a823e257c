"""Scratch benchmark of the storage layouts issue 14 names for a writer that keeps up (not the store).

Each candidate takes the same GPU-shaped batches as benchmarks/writer.py (built by its helpers), turns
them into Arrow on writer threads and writes them in coalesced writes of capture's default size
(``WriteBuffer``, 4 DuckDB row groups). Measured: token×layer rows/s until every writer drained and
the files were closed, bytes per row counting every file left behind, the time to read every logit
back as numpy, and a check that what comes back equals the fp16-rounded logits that went in.

Candidates (``--only NAME`` runs a subset):

* ``store_list`` — the real writer path of today (``benchmarks.writer.replay``): ``FLOAT[]`` lists.
* ``duckdb_list`` — the same layout written by this script's own sink (so the other rows compare
  against a baseline with the same overheads).
* ``duckdb_array`` — DuckDB fixed-size ``ARRAY`` columns: ``SMALLINT[k]``, ``FLOAT[k]``, ``FLOAT[E]``.
* ``duckdb_array_f16bits`` — logits as ``SMALLINT[E]`` holding the fp16 bit pattern (DuckDB has no
  16-bit float type); readers view the int16 buffer as float16.
* ``parquet_f16`` — per-write Parquet shards from pyarrow, logits a fixed-size ``halffloat`` list
  (Parquet's Float16 logical type), zstd; prompts and tokens in shards too. DuckDB reads them through
  ``read_parquet`` as ``FLOAT[]``, so a view keeps the store's column types.
* ``parquet_f16_bss`` — the same with byte-stream-split encoding on the float columns.
* ``parquet_f16_w16`` — byte-stream-split shards with the top-k weights stored as ``halffloat`` too
  (exact for weights a bf16 model applied, down to 2**-14; not for a float32 model).
* ``parquet_f16_blob`` — shards whose list columns are fixed-size binary values: each row's logits
  are one ``2·E``-byte value holding the fp16 bit patterns, and likewise the top-k ids (int16) and
  weights (fp16). DuckDB reads these as ``BLOB``, so a SQL reader cannot see ``FLOAT[]`` logits; this
  candidate measures what that costs and buys.
* ``..._t2`` suffix — the same layout with 2 writer threads.

``python benchmarks/writer_candidates.py --help``.
"""

from __future__ import annotations

import argparse
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from benchmarks.writer import (  # noqa: E402
    Shape,
    VocabTokenizer,
    build_shape,
    dir_bytes,
    host_batch,
    machine,
    replay,
)
from workbench.capture.coalesce import DEFAULT_WRITE_ROWS, WriteBuffer  # noqa: E402
from workbench.capture.packing import HostBatch  # noqa: E402

CANDIDATES = (
    "store_list",
    "duckdb_list",
    "duckdb_array",
    "duckdb_array_f16bits",
    "parquet_f16",
    "parquet_f16_bss",
    "parquet_f16_w16",
    "parquet_f16_blob",
    "duckdb_list_t2",
    "duckdb_array_f16bits_t2",
    "parquet_f16_t2",
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--experts", type=int, default=48)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--mean-tokens", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--vocab", type=int, default=32_000)
    p.add_argument("--rows", type=int, default=2_097_152)
    p.add_argument("--pool", type=int, default=4)
    p.add_argument("--write-rows", type=int, default=DEFAULT_WRITE_ROWS, help="routing rows per write/shard")
    p.add_argument("--only", default=",".join(CANDIDATES), help="comma-separated candidates")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    args.logits = ["fp16"]
    args.only = [c.strip() for c in args.only.split(",")]
    unknown = sorted(set(args.only) - set(CANDIDATES))
    if unknown:
        p.error(f"unknown candidates {unknown}; choose from {', '.join(CANDIDATES)}")
    return args


# -- Arrow for the candidate layouts ---------------------------------------------------------------
def _positions(host: HostBatch) -> tuple[np.ndarray, np.ndarray]:
    lengths = host.batch.lengths
    ids = np.array([p.prompt_id for p in host.batch.prompts], dtype=np.int32)
    return np.repeat(ids, lengths), np.concatenate([np.arange(n, dtype=np.int32) for n in lengths])


def _fixed(values: np.ndarray, width: int, value_type: pa.DataType) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=value_type), width)


def _lists(values: np.ndarray, width: int, value_type: pa.DataType) -> pa.Array:
    n = values.size // width
    offsets = pa.array(np.arange(0, n * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=value_type))


def _blobs(values: np.ndarray, width: int) -> pa.Array:
    """Each row's ``width`` values as one fixed-size binary value (their bytes, native order)."""
    rows = np.ascontiguousarray(values).reshape(-1, width)
    size = width * rows.dtype.itemsize
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(size), len(rows), [None, pa.py_buffer(rows)])


def tables(host: HostBatch, tokenizer: VocabTokenizer, layout: str) -> dict[str, pa.Table]:
    """prompts, tokens (as ``to_arrow`` builds them) and routing in ``layout`` (list, array, f16bits, f16)."""
    prompt_ids, positions = _positions(host)
    n, n_layers = prompt_ids.size, len(host.layers)
    token_ids = host.token_ids.numpy().astype(np.int32)
    nll = host.nll.numpy()
    prompts = pa.table(
        {
            "prompt_id": pa.array([p.prompt_id for p in host.batch.prompts], pa.int32()),
            "text": pa.array([p.text for p in host.batch.prompts], pa.string()),
            "label": pa.array([p.label for p in host.batch.prompts], pa.string()),
            "n_tokens": pa.array(host.batch.lengths, pa.int32()),
        }
    )
    tokens = pa.table(
        {
            "prompt_id": prompt_ids,
            "position": positions,
            "token_id": token_ids,
            "token": pa.array(tokenizer.convert_ids_to_tokens(token_ids.tolist()), pa.string()),
            "nll": pa.array(nll, pa.float32(), mask=np.isnan(nll)),
        }
    )
    k = host.indices[0].shape[1]
    idx = np.stack([t.numpy() for t in host.indices], axis=1)
    w = np.stack([t.numpy() for t in host.weights], axis=1)
    w_type = pa.float32()
    if layout in ("f16w16", "f16blob"):
        w, w_type = w.astype(np.float16), pa.float16()
    lg = np.stack([t.numpy() for t in host.logits if t is not None], axis=1)  # float16 [n, L, E]
    e = lg.shape[-1]
    build = _lists if layout == "list" else _fixed
    if layout == "f16blob":
        logits = _blobs(lg, e)
        experts, weights = _blobs(idx.astype(np.int16), k), _blobs(w, k)
    else:
        experts, weights = build(idx, k, pa.int16()), build(w, k, w_type)
    if layout == "list":
        logits = _lists(lg.astype(np.float32), e, pa.float32())
    elif layout == "array":
        logits = _fixed(lg.astype(np.float32), e, pa.float32())
    elif layout == "f16bits":
        logits = _fixed(lg.view(np.int16), e, pa.int16())
    elif layout != "f16blob":
        logits = _fixed(lg, e, pa.float16())
    routing = pa.table(
        {
            "prompt_id": np.repeat(prompt_ids, n_layers),
            "position": np.repeat(positions, n_layers),
            "layer": np.tile(np.array(host.layers, dtype=np.int32), n),
            "experts": experts,
            "weights": weights,
            "logits": logits,
        }
    )
    return {"prompts": prompts, "tokens": tokens, "routing": routing}


# -- sinks ----------------------------------------------------------------------------------------------
class DuckSink:
    """Coalesced INSERTs into one DuckDB file; each thread writes through its own cursor."""

    def __init__(self, path: Path, layout: str, n_experts: int, k: int) -> None:
        logits = {"list": "FLOAT[]", "array": f"FLOAT[{n_experts}]", "f16bits": f"SMALLINT[{n_experts}]"}[
            layout
        ]
        lists = "[]" if layout == "list" else f"[{k}]"
        self.con = duckdb.connect(str(path))
        self.con.execute(
            "CREATE TABLE prompts (run_id VARCHAR, prompt_id INTEGER, text VARCHAR, label VARCHAR, "
            "n_tokens INTEGER)"
        )
        self.con.execute(
            "CREATE TABLE tokens (run_id VARCHAR, prompt_id INTEGER, position INTEGER, token_id INTEGER, "
            "token VARCHAR, nll FLOAT)"
        )
        self.con.execute(
            "CREATE TABLE routing (run_id VARCHAR, prompt_id INTEGER, position INTEGER, layer INTEGER, "
            f"experts SMALLINT{lists}, weights FLOAT{lists}, logits {logits})"
        )

    def writer(self) -> Callable[[dict[str, pa.Table | None]], None]:
        cur = self.con.cursor()

        def write(t: dict[str, pa.Table | None]) -> None:
            cur.execute("BEGIN TRANSACTION")
            for name, table in t.items():
                cur.register(f"_in_{name}", table)
                cur.execute(f"INSERT INTO {name} SELECT 'run', * FROM _in_{name}")
                cur.unregister(f"_in_{name}")
            cur.execute("COMMIT")

        return write

    def close(self) -> None:
        self.con.close()


class ParquetSink:
    """One Parquet file per table per write, written to a temporary name and renamed when whole."""

    def __init__(self, root: Path, bss: bool) -> None:
        self.root = root
        self.bss = bss
        self._seq = 0
        self._lock = threading.Lock()
        for name in ("prompts", "tokens", "routing"):
            (root / name).mkdir(parents=True)

    def writer(self) -> Callable[[dict[str, pa.Table | None]], None]:
        def write(t: dict[str, pa.Table | None]) -> None:
            with self._lock:
                self._seq += 1
                seq = self._seq
            for name, table in t.items():
                assert table is not None
                final = self.root / name / f"shard-{seq:06d}.parquet"
                tmp = final.with_suffix(".tmp")
                floats = [c for c in ("weights", "logits", "nll") if c in table.column_names]
                pq.write_table(
                    table,
                    tmp,
                    compression="zstd",
                    compression_level=1,
                    use_byte_stream_split=floats if self.bss and floats else False,
                    # dictionary-encoding float16 values (FLBA) is ~10x slower than writing them plain
                    use_dictionary=[c for c in table.column_names if c not in floats],
                    row_group_size=max(1, table.num_rows),
                )
                tmp.rename(final)

        return write

    def close(self) -> None:
        return None


@dataclass
class Result:
    rows: int
    seconds: float
    cpu_s: float  # process CPU seconds (all threads): robust to other tenants on a shared box
    nbytes: int
    read_s: float
    exact: bool


def run_candidate(args: argparse.Namespace, name: str, shapes: list[Shape], where: Path) -> Result:
    """Replay batches through ``name``'s sink on 1 or 2 writer threads; measure, read back, check."""
    if where.exists():
        shutil.rmtree(where)
    where.mkdir(parents=True)
    if name == "store_list":
        cpu = time.process_time()
        r = replay(args, shapes, args.experts, None, where)
        return Result(r.rows, r.closed, time.process_time() - cpu, r.bytes_on_disk, float("nan"), True)
    threads = 2 if name.endswith("_t2") else 1
    base = name.removesuffix("_t2")
    layout = {"duckdb_list": "list", "duckdb_array": "array", "duckdb_array_f16bits": "f16bits"}.get(
        base, "f16w16" if base.endswith("w16") else "f16blob" if base.endswith("blob") else "f16"
    )
    sink: DuckSink | ParquetSink
    if base.startswith("duckdb"):
        sink = DuckSink(where / "store.duckdb", layout, args.experts, args.top_k)
    else:
        sink = ParquetSink(where, bss=base.endswith(("bss", "w16")))  # blobs: bss does not apply
    tokenizer = VocabTokenizer(args.vocab, args.seed)
    layers = list(range(args.layers))
    plan: list[HostBatch] = []
    rows = 0
    while rows < args.rows:
        shape = shapes[len(plan) % len(shapes)]
        plan.append(host_batch(shape, len(plan) * args.batch_size, layers))
        rows += shape.n_tokens * args.layers
    q: queue.Queue[HostBatch | None] = queue.Queue(maxsize=2 * threads)
    errors: list[BaseException] = []

    def work() -> None:
        buffer = WriteBuffer(sink.writer(), max_rows=args.write_rows)  # type: ignore[arg-type]
        try:
            while (host := q.get()) is not None:
                buffer.add(tables(host, tokenizer, layout))  # type: ignore[arg-type]
            buffer.flush()
        except BaseException as exc:  # surfaced after join
            errors.append(exc)
            while q.get() is not None:
                continue

    workers = [threading.Thread(target=work) for _ in range(threads)]
    start, cpu = time.perf_counter(), time.process_time()
    for t in workers:
        t.start()
    for host in plan:
        q.put(host)
    for _ in workers:
        q.put(None)
    for t in workers:
        t.join()
    sink.close()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    if errors:
        raise errors[0]
    nbytes = dir_bytes(where)
    read_s, exact = read_back(where, layout, shapes, len(plan), args.experts)
    shutil.rmtree(where)
    return Result(rows, seconds, cpu, nbytes, read_s, exact)


def read_back(
    where: Path, layout: str, shapes: list[Shape], n_batches: int, n_experts: int
) -> tuple[float, bool]:
    """Seconds to read every logit as a float32 numpy [rows, E] through DuckDB; whether the sum matches."""
    start = time.perf_counter()
    if layout.startswith("f16") and layout != "f16bits":
        con = duckdb.connect()
        con.execute(f"CREATE VIEW routing AS SELECT * FROM read_parquet('{where}/routing/*.parquet')")
    else:
        con = duckdb.connect(str(where / "store.duckdb"), read_only=True)
    total = 0.0
    n = 0
    for batch in con.sql("SELECT logits FROM routing").to_arrow_reader(262_144):
        col = batch.column(0)
        if layout == "f16blob":  # one BLOB per row: its bytes are the row's fp16 logits
            blob = pa.array(col).cast(pa.binary(2 * n_experts))
            arr = np.frombuffer(blob.buffers()[1], np.float16, count=len(blob) * n_experts).astype(np.float32)
            total += float(arr.astype(np.float64).sum())
            n += arr.size
            continue
        values = col.values if isinstance(col, (pa.FixedSizeListArray,)) else col.flatten()
        arr = values.to_numpy(zero_copy_only=False)
        arr = arr.view(np.float16).astype(np.float32) if layout == "f16bits" else arr
        total += float(arr.astype(np.float64).sum())
        n += arr.size
    con.close()
    seconds = time.perf_counter() - start
    expected = sum(
        float(torch.stack([t for t in shapes[i % len(shapes)].logits if t is not None]).double().sum())
        for i in range(n_batches)
    )
    return seconds, bool(np.isclose(total, expected, rtol=1e-9, atol=1e-3))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"# machine: {machine()}")
    print(
        f"# workload: E={args.experts} top-{args.top_k}, fp16 logits, {args.layers} layers, {args.batch_size} "
        f"prompts/batch (log-normal lengths, mean {args.mean_tokens}), >= {args.rows:,} rows, "
        f"writes of {args.write_rows:,} rows; target bytes/row <= {2 * args.experts + 24}"
    )
    rng = np.random.default_rng([args.seed, args.experts])
    shapes = [build_shape(args, args.experts, "fp16", rng) for _ in range(args.pool)]
    half = [
        Shape(s.lengths, s.texts, s.token_ids, s.nll, s.indices, s.weights,
              [None if t is None else t.to(torch.float16) for t in s.logits])
        for s in shapes
    ]  # fmt: skip
    tmp = None
    workdir = args.workdir
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="moe-writer-cand-")
        workdir = Path(tmp.name)
    print(f"{'candidate':<26}{'rows/s':>12}{'rows/cpu_s':>12}{'bytes/row':>11}{'read s':>9}  exact")
    try:
        for name in args.only:
            pool = shapes if name == "store_list" else half
            r = run_candidate(args, name, pool, workdir / name)
            print(
                f"{name:<26}{r.rows / r.seconds:>12,.0f}{r.rows / r.cpu_s:>12,.0f}{r.nbytes / r.rows:>11.1f}{r.read_s:>9.2f}  "
                f"{'yes' if r.exact else 'NO'}",
                flush=True,
            )
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
