"""Train tiny-ref (or a micro version of it) on the corpus mixture plus chat-format refusal examples.

    from workbench.zoo.train import TrainConfig, train
    result = train(TrainConfig(steps=5, batch_size=4, seq_len=64, vocab_size=512, tokenizer_rows=2000))

Everything is seeded: the tokenizer is trained on a fixed text list, the data order comes from
``random.Random(f"tiny-ref:{seed}")``, the weights from ``torch.manual_seed(seed)``. Two runs with
the same torch build and thread count give bit-identical weights; training runs on one thread by
default (``threads=1``) so the result does not depend on how many cores the machine has. The budget is a step count
(``steps × batch_size × seq_len`` tokens), never wall time, so a loaded machine trains the same model.

Data: each domain gets a share of the token budget (:data:`SHARES`), filled by cycling through its
*train* rows in a seeded shuffle; ``chat`` is every train harmful/benign request as an exchange
(:mod:`workbench.behaviour.chat`). Documents are ``<bos> text <eos>``, shuffled, concatenated and cut into
windows of ``seq_len`` tokens. Held-out rows (and so every probe suite) are never seen.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerFast, Qwen2MoeConfig, Qwen2MoeForCausalLM

from workbench.behaviour import chat
from workbench.data.corpus import iter_corpus
from workbench.zoo.tokenizer import train_tokenizer

#: Share of the token budget per domain; ``chat`` = harmful → refusal, benign → compliance.
SHARES: dict[str, float] = {
    "prose": 0.24,
    "code": 0.16,
    "math": 0.12,
    "german": 0.12,
    "spanish": 0.12,
    "italian": 0.12,
    "chat": 0.12,
}
_CHUNK = 256


@dataclass
class TrainConfig:
    seed: int = 0
    steps: int = 1300
    batch_size: int = 32
    seq_len: int = 128
    lr: float = 2e-3
    min_lr_frac: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    aux_loss_coef: float = 0.01
    shares: dict[str, float] = field(default_factory=lambda: dict(SHARES))
    vocab_size: int = 4096
    #: rows per domain for tokenizer training (None: every train row)
    tokenizer_rows: int | None = None
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    experts: int = 8
    top_k: int = 2
    moe_intermediate_size: int = 256
    shared_intermediate_size: int = 256
    #: torch threads while training (None: leave as is)
    threads: int | None = 1
    log_every: int = 50

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size * self.seq_len


@dataclass
class TrainResult:
    model: Qwen2MoeForCausalLM
    tokenizer: PreTrainedTokenizerFast
    config: TrainConfig
    #: (step, mean training loss since the previous entry)
    losses: list[tuple[int, float]]
    stats: dict[str, Any]


def domain_texts(domain: str, limit: int | None = None) -> list[str]:
    """The train texts of a corpus domain, or of ``chat`` (formatted exchanges), in file order."""
    if domain == "chat":
        rows = list(iter_corpus(["harmful", "benign"]))
        texts = [chat.exchange(r["text"], r["domain"] == "harmful") for r in rows]
    else:
        texts = [r["text"] for r in iter_corpus(domain)]
    return texts if limit is None else texts[:limit]


def build_tokenizer(cfg: TrainConfig) -> PreTrainedTokenizerFast:
    texts = [t for d in sorted(cfg.shares) for t in domain_texts(d, cfg.tokenizer_rows)]
    return train_tokenizer(texts, vocab_size=cfg.vocab_size)


def model_config(cfg: TrainConfig, tokenizer: PreTrainedTokenizerFast) -> Qwen2MoeConfig:
    return Qwen2MoeConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.moe_intermediate_size * cfg.top_k,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        num_experts=cfg.experts,
        num_experts_per_tok=cfg.top_k,
        moe_intermediate_size=cfg.moe_intermediate_size,
        shared_expert_intermediate_size=cfg.shared_intermediate_size,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        norm_topk_prob=True,
        max_position_embeddings=max(512, cfg.seq_len),
        tie_word_embeddings=True,
        router_aux_loss_coef=cfg.aux_loss_coef,
        output_router_logits=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _domain_docs(
    domain: str, quota: int, tokenizer: PreTrainedTokenizerFast, rng: random.Random
) -> tuple[list[list[int]], int]:
    """Documents of ``domain`` (seeded shuffle, cycled) until they hold ``quota`` tokens."""
    texts = domain_texts(domain)
    eos = tokenizer.eos_token_id
    docs: list[list[int]] = []
    total = 0
    while total < quota:
        order = list(range(len(texts)))
        rng.shuffle(order)
        for start in range(0, len(order), _CHUNK):  # encode only as many texts as the quota needs
            chunk = [texts[i] for i in order[start : start + _CHUNK]]
            for ids in tokenizer(chunk, add_special_tokens=True)["input_ids"]:
                docs.append([*ids, eos])
                total += len(docs[-1])
                if total >= quota:
                    return docs, total
    return docs, total


def build_windows(
    cfg: TrainConfig, tokenizer: PreTrainedTokenizerFast
) -> tuple[torch.Tensor, dict[str, int]]:
    """``[steps * batch_size, seq_len]`` token windows in training order, and tokens per domain."""
    rng = random.Random(f"tiny-ref:{cfg.seed}")
    total_share = sum(cfg.shares.values())
    docs: list[list[int]] = []
    per_domain: dict[str, int] = {}
    for domain in sorted(cfg.shares):
        quota = math.ceil(cfg.tokens * cfg.shares[domain] / total_share)
        got, per_domain[domain] = _domain_docs(domain, quota, tokenizer, rng)
        docs.extend(got)
    rng.shuffle(docs)
    n = cfg.steps * cfg.batch_size
    flat = torch.tensor([t for doc in docs for t in doc][: n * cfg.seq_len], dtype=torch.long)
    return flat.view(n, cfg.seq_len), per_domain


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train(cfg: TrainConfig, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train a tokenizer and a Qwen2-MoE model on ``cfg``'s budget; returns both and the statistics."""
    say = log or (lambda _msg: None)
    old_threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        t0 = time.perf_counter()
        tokenizer = build_tokenizer(cfg)
        windows, per_domain = build_windows(cfg, tokenizer)
        t_data = time.perf_counter() - t0
        say(f"tokenizer + data: {t_data:.1f}s, {windows.numel():,} tokens in {len(windows)} windows")
        torch.manual_seed(cfg.seed)
        model = Qwen2MoeForCausalLM(model_config(cfg, tokenizer))
        model.train()
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
        no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
            betas=(0.9, 0.95),
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
        losses: list[tuple[int, float]] = []
        running, count = 0.0, 0
        t1 = time.perf_counter()
        for step in range(cfg.steps):
            batch = windows[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            out = model(input_ids=batch, labels=batch, output_router_logits=cfg.aux_loss_coef > 0)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            lm_loss = out.loss.item() - (cfg.aux_loss_coef * out.aux_loss.item() if cfg.aux_loss_coef else 0)
            running, count = running + lm_loss, count + 1
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                losses.append((step + 1, running / count))
                rate = (step + 1) * cfg.batch_size * cfg.seq_len / (time.perf_counter() - t1)
                say(f"step {step + 1}/{cfg.steps}  loss {running / count:.3f}  {rate:,.0f} tok/s")
                running, count = 0.0, 0
        model.eval()
        stats = {
            "params": sum(p.numel() for p in model.parameters()),
            "tokens": windows.numel(),
            "tokens_per_domain": per_domain,
            "steps": cfg.steps,
            "wall_s": round(time.perf_counter() - t0, 1),
            "train_s": round(time.perf_counter() - t1, 1),
            "data_s": round(t_data, 1),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "config": asdict(cfg),
        }
        return TrainResult(model=model, tokenizer=tokenizer, config=cfg, losses=losses, stats=stats)
    finally:
        torch.set_num_threads(old_threads)
