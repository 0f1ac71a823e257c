"""tiny-ref: the embedded reference MoE model (Qwen2-MoE architecture, trained here, committed).

    from workbench.zoo import tiny_ref
    model, tokenizer = tiny_ref.load()                     # datasets/tiny-ref, float32, eval mode
    tiny_ref.build()                                       # retrain, save, measure, write the card

4 layers, hidden 128, 8 routed experts top-2 (``moe_intermediate_size`` 256) and one shared expert
per layer, tied embeddings, a 4096-token byte-level BPE; trained by :mod:`workbench.zoo.train` on
the corpus mixture and on chat-format refusal examples (:mod:`workbench.behaviour.chat`). The weights are
stored in fp16 (``model.safetensors``); ``config.json`` says ``float32`` so they load upcast.
``python -m workbench.zoo.tiny_ref --help`` lists the options.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from workbench.data.common import datasets_dir
from workbench.zoo.train import TrainConfig, TrainResult, train

NAME = "tiny-ref"
#: Training statistics saved next to the weights (the card is regenerated from it).
STATS_FILE = "training.json"


def model_dir() -> Path:
    """Where the committed tiny-ref lives: ``datasets/tiny-ref``."""
    return datasets_dir() / NAME


def save(result: TrainResult, out_dir: str | Path) -> Path:
    """Save weights (fp16 safetensors), config (loads as float32), tokenizer and training stats."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = result.model
    model.config.output_router_logits = False
    model.half().save_pretrained(out, safe_serialization=True)
    model.float()
    (out / "model.safetensors").chmod(0o644)  # written through a private temp file
    config_path = out / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["dtype"] = "float32"
    config["architectures"] = [type(model).__name__]
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    result.tokenizer.save_pretrained(out)
    stats = {**result.stats, "losses": result.losses}
    (out / STATS_FILE).write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def load(path: str | Path | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of tiny-ref from ``path`` (default :func:`model_dir`), float32, eval mode."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    src = Path(path) if path is not None else model_dir()
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (src / f).exists()]
    if missing:
        raise FileNotFoundError(
            f"tiny-ref is incomplete at {src} (missing {', '.join(missing)}); "
            "rebuild it with `moe-workbench zoo train tiny-ref`"
        )
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, use_safetensors=True)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(src)
    return model.eval(), tokenizer


def build(
    out_dir: str | Path | None = None,
    config: TrainConfig | None = None,
    card: bool = True,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Train tiny-ref, save it to ``out_dir`` (default :func:`model_dir`) and write its model card."""
    out = Path(out_dir) if out_dir is not None else model_dir()
    result = train(config or TrainConfig(), log=log)
    save(result, out)
    if log:
        log(f"saved {out} ({result.stats['train_s']:.0f}s training)")
    if card:
        from workbench.zoo.card import write_card

        path = write_card(out, log=log)
        if log:
            log(f"wrote {path}")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m workbench.zoo.tiny_ref",
        description="Train tiny-ref, save it and write its model card.",
    )
    parser.add_argument("--out", type=Path, default=None, help="output directory (default datasets/tiny-ref)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch threads")
    parser.add_argument("--no-card", action="store_true", help="skip the model card measurements")
    args = parser.parse_args(argv)
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        seed=args.seed,
        threads=args.threads,
    )
    build(args.out, cfg, card=not args.no_card)


if __name__ == "__main__":
    main()
