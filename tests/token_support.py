"""A planted run whose tokens are real tiny-ref symbols (``Ġreturn``, ``ĊĠĠĠ``, split ``日``), no model needed.

The prompts are tokenised with tiny-ref's own byte-level BPE tokenizer (datasets/tiny-ref), so the
store holds exactly what a capture of tiny-ref would hold in ``tokens.token``; the routing is planted:

* at layer :data:`LAYER`, expert :data:`EXPERT` takes every ``Ġreturn`` token (tiny-ref's symbol for
  " return") in slot 0 with gate weight :data:`TOP_WEIGHT`, and about 1 in :data:`NOISE_EVERY` of the
  other tokens in slot 1 with a weight below 0.5: its top contexts are the ``return`` tokens, and a
  random sample of its contexts is mostly other tokens;
* everything else is routed uniformly at random, top-:data:`K` of :data:`E`.

Built in well under a second (tokenising takes milliseconds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from synthetic import lists

from workbench.store import Store

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "datasets" / "tiny-ref" / "tokenizer.json"
RUN = "worded"
E, K = 8, 2
LAYERS = (0, 1)
LAYER, EXPERT = 1, 5
TOP_WEIGHT = 0.95
NOISE_EVERY = 6
PLANTED_SYMBOL = "Ġreturn"
CODE = [
    "def add(x, y):\n    return x + y\n",
    "def first(items):\n    if items:\n        return items[0]\n    return None\n",
    "class Box:\n\tdef get(self):\n\t\treturn self.value\n",
    "for i in range(3):\n    print(i)\n",
]
PROSE = [
    "The cat sat on the mat, and then it slept until noon.",
    "Le café était fermé; nous sommes rentrés à pied.",
    "日本語のテキストも少し含まれています。",
    "She said she would return the book tomorrow morning.",
]


def texts() -> list[tuple[str, str]]:
    """(text, label) of every prompt: the code prompts four times over, the prose ones twice."""
    return [(t, "code") for t in CODE * 4] + [(t, "prose") for t in PROSE * 2]


def tokenizer() -> object:
    """tiny-ref's tokenizer (``tokenizers.Tokenizer``), read from its JSON file."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(TOKENIZER))


def worded_db(path: Path, long_prompt_tokens: int = 0, run_id: str = RUN, with_weights: bool = True) -> Path:
    """Write the planted run (see the module docstring) to ``path`` as ``run_id``; returns the path.

    ``long_prompt_tokens`` > 0 adds one more prose prompt of at least that many tokens (the routing
    page must wrap it); ``with_weights=False`` stores no gate weights (as a run imported from a serving
    engine), so nothing can be ranked by weight.
    """
    tok = tokenizer()
    rows = texts()
    if long_prompt_tokens:
        sentence = "A long line of prose keeps going, with commas and words: "
        rows.append((sentence * (long_prompt_tokens // 8 + 1), "prose"))
    rng = np.random.default_rng(7)
    pid_tok: list[int] = []
    pos_tok: list[int] = []
    ids: list[int] = []
    symbols: list[str] = []
    n_tokens: list[int] = []
    for pid, (text, _) in enumerate(rows):
        enc = tok.encode(text)  # type: ignore[attr-defined]
        n_tokens.append(len(enc.ids))
        for pos, (i, s) in enumerate(zip(enc.ids, enc.tokens, strict=True)):
            pid_tok.append(pid)
            pos_tok.append(pos)
            ids.append(i)
            symbols.append(s)
    n = len(ids)
    prompts = pa.table({
        "prompt_id": pa.array(range(len(rows)), pa.int32()), "text": [t for t, _ in rows],
        "label": [lab for _, lab in rows], "pair_id": pa.array([None] * len(rows), pa.string()),
        "split": ["test"] * len(rows), "meta": pa.array([None] * len(rows), pa.string()),
        "n_tokens": pa.array(n_tokens, pa.int32()),
    })  # fmt: skip
    tokens = pa.table({
        "prompt_id": pa.array(pid_tok, pa.int32()), "position": pa.array(pos_tok, pa.int32()),
        "token_id": pa.array(ids, pa.int32()), "token": symbols,
        "nll": pa.array(np.ones(n), pa.float32()),
    })  # fmt: skip
    n_rows = n * len(LAYERS)
    experts = np.argsort(rng.random((n_rows, E)), axis=1)[:, :K].astype(np.int16)
    weights = np.sort(rng.uniform(0.2, 0.8, size=(n_rows, K)), axis=1)[:, ::-1].astype(np.float32)
    weights[:, 1] = np.minimum(weights[:, 1], 0.49)
    planted = [s == PLANTED_SYMBOL for s in symbols]
    others = np.array([e for e in range(E) if e != EXPERT])
    for token in range(n):
        row = token * len(LAYERS) + LAYERS.index(LAYER)
        if planted[token]:
            experts[row], weights[row] = [EXPERT, (EXPERT + 1) % E], [TOP_WEIGHT, 1 - TOP_WEIGHT]
        else:  # never EXPERT, except in slot 1 of every NOISE_EVERY-th token
            experts[row] = rng.choice(others, size=K, replace=False)
            if token % NOISE_EVERY == 0:
                experts[row, 1] = EXPERT
    routing = pa.table({
        "prompt_id": np.repeat(np.asarray(pid_tok, np.int32), len(LAYERS)),
        "position": np.repeat(np.asarray(pos_tok, np.int32), len(LAYERS)),
        "layer": np.tile(np.asarray(LAYERS, np.int32), n), "experts": lists(experts),
        "weights": lists(weights) if with_weights else pa.nulls(n_rows, pa.list_(pa.float32())),
        "logits": pa.nulls(n_rows, pa.list_(pa.float32())),
    })  # fmt: skip
    layer_rows = [{"layer": x, "module_path": f"m.{x}", "n_experts": E, "top_k": K} for x in LAYERS]
    with Store(path) as st:
        st.create_run(
            model="tiny-ref", architecture="Synthetic", probe="worded", n_experts=E, top_k=K,
            config={}, layers=layer_rows, run_id=run_id,
        )  # fmt: skip
        st.write_batch(run_id, prompts=prompts, tokens=tokens, routing=routing)
        st.set_status(run_id, "complete")
    return path
