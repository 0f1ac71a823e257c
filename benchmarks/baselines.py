"""Baselines of the capture benchmark: the same routing rows, written to DuckDB the ways people do it today.

An nnsight trace, HF ``output_router_logits=True`` + Python lists + pandas + ``executemany``, and a
TransformerLens ``TransformerBridge.run_with_cache``; plus the row-building and DuckDB helpers they share.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.report import Row
from benchmarks.timing import Clock

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
