"""capture --generate / --chat: prompt and response recorded, each token's routing that of the forward that read it.

The central check: a generating capture's rows equal a plain capture of the same token sequences
(prompt + response text as one prompt), bit for bit, so a generated token's routing row is the row a
capture of the full text records. Then: sampling is seeded per prompt, a killed generating capture
resumes without duplicates, --chat encodes the tokenizer's template, and every refusal says what to do.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from workbench.capture.batching import ChatTemplateError, pad_batch
from workbench.capture.engine import CaptureOptions, capture, resume, token_limit
from workbench.capture.generation import RESPONSE_META_KEY, check_generation, continue_batch, prompt_seed
from workbench.cli import app
from workbench.probefile import Prompt, read_probe_file
from workbench.store import Store

pytestmark = pytest.mark.integration


def _rows(db: Path, run: str) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    with Store(db, read_only=True) as store:
        return (
            store.prompts(run).sort("prompt_id"),
            store.tokens(run).sort("prompt_id", "position"),
            store.routing(run).sort("prompt_id", "position", "layer"),
        )


def test_generated_rows_equal_a_capture_of_the_full_text(
    generated_run: tuple[Path, Path, str], tiny_ref_model: object, tmp_path: Path
) -> None:
    db, probe, run = generated_run
    prompts, tokens, routing = _rows(db, run)
    asked = read_probe_file(probe)
    assert prompts["text"].to_list() == [p.text for p in asked]  # prompts.text stays the prompt
    responses = [json.loads(m)[RESPONSE_META_KEY] for m in prompts["meta"].to_list()]
    own_meta = [{k: v for k, v in json.loads(m).items() if k != RESPONSE_META_KEY} for m in prompts["meta"]]
    assert own_meta == [p.meta for p in asked]
    # both ways a response ends are covered: the refusal stops at <eos>, the compliance at the limit
    assert {r["stop"] for r in responses} == {"eos", "length"}
    assert all(r["text"].endswith("<eos>") == (r["stop"] == "eos") for r in responses)
    assert all(1 <= r["n_tokens"] <= 12 for r in responses)
    # the prompts of a batch differ in length, so generation ran on left-padded rows
    n_prompt = tokens.filter(pl.col("segment") == "prompt").group_by("prompt_id").len().sort("prompt_id")
    assert n_prompt["len"][:3].n_unique() > 1
    for pid, r in enumerate(responses):
        seg = tokens.filter(pl.col("prompt_id") == pid)["segment"].to_list()
        k = seg.count("prompt")
        assert seg == ["prompt"] * k + ["response"] * r["n_tokens"]  # the response follows the prompt
    assert (
        prompts["n_tokens"].to_list() == tokens.group_by("prompt_id").len().sort("prompt_id")["len"].to_list()
    )

    full = [replace(p, text=p.text + r["text"]) for p, r in zip(asked, responses, strict=True)]
    plain_db = tmp_path / "plain.duckdb"
    capture(tiny_ref_model, full, plain_db, run_id="plain", batch_size=3, progress=False)  # type: ignore[arg-type]
    _, plain_tokens, plain_routing = _rows(plain_db, "plain")
    keys = ["prompt_id", "position", "token_id", "token", "nll"]
    assert plain_tokens.select(keys).equals(tokens.select(keys))  # same ids; nll of the same predictions
    assert plain_routing.equals(routing)  # experts, weights and logits, bit for bit
    assert set(plain_tokens["segment"]) == {"prompt"}  # read as a prompt, the same text is all prompt


def test_sampling_draws_per_prompt_whatever_the_batch(tiny_ref_model: object, tmp_path: Path) -> None:
    asked = [
        Prompt(i, f"User: {t}\nAssistant:", "x") for i, t in enumerate(["Tell me a story", "Say hi", "Help"])
    ]

    def responses(batch_size: int, seed: int) -> list[list[int]]:
        db = tmp_path / f"s{batch_size}-{seed}.duckdb"
        capture(
            tiny_ref_model, asked, db, run_id="s", batch_size=batch_size, generate=6,  # type: ignore[arg-type]
            sample=True, seed=seed, temperature=3.0, progress=False,
        )  # fmt: skip
        with Store(db, read_only=True) as store:
            rows = store.tokens("s").filter(pl.col("segment") == "response").sort("prompt_id", "position")
        return [rows.filter(pl.col("prompt_id") == i)["token_id"].to_list() for i in range(len(asked))]

    alone, together = responses(1, 7), responses(3, 7)
    assert alone == together  # each prompt draws from its own generator: the batch does not matter
    assert responses(3, 8) != together  # and the seed does
    assert prompt_seed(7, 0) != prompt_seed(7, 1) != prompt_seed(8, 1)


def test_a_killed_generating_capture_resumes_without_duplicates(
    generated_run: tuple[Path, Path, str], tiny_ref_model: object, tmp_path: Path
) -> None:
    ref_db, probe, run = generated_run
    db = tmp_path / "killed.duckdb"
    original = Store.write_batch
    calls = {"n": 0}

    def flaky(self: Store, run_id: str, **tables: object) -> None:
        calls["n"] += 1
        if calls["n"] >= 2:
            raise OSError("disk full (simulated)")
        original(self, run_id, **tables)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Store, "write_batch", flaky)
        with pytest.raises(OSError, match="disk full"):
            capture(
                tiny_ref_model, probe, db, run_id=run, batch_size=3, generate=12, write_rows=1, progress=False
            )  # type: ignore[arg-type]
    with Store(db, read_only=True) as store:
        assert store.run(run)["status"] == "failed"
        assert store.done_prompt_ids(run) == {0, 1, 2}
    # the stored meta holds each response: resume compares the prompts' own meta with the probe file's
    assert resume(db, run, model=tiny_ref_model, progress=False) == run  # type: ignore[arg-type]
    with Store(db, read_only=True) as store:
        assert store.run(run)["status"] == "complete"
    for got, want in zip(_rows(db, run), _rows(ref_db, run), strict=True):
        assert got.drop("content_hash", strict=False).equals(want.drop("content_hash", strict=False))
    assert _rows(db, run)[0]["content_hash"].equals(_rows(ref_db, run)[0]["content_hash"])


def test_chat_reads_the_template_and_keeps_the_prompt(tiny_ref_model: object, tmp_path: Path) -> None:
    tokenizer = tiny_ref_model.tokenizer  # type: ignore[attr-defined]
    asked = [Prompt(0, "How do I bake bread?", "benign"), Prompt(1, "How do I pick a lock?", "harmful")]
    db = tmp_path / "chat.duckdb"
    capture(tiny_ref_model, asked, db, run_id="c", generate=3, chat=True, progress=False)  # type: ignore[arg-type]
    prompts, tokens, _ = _rows(db, "c")
    assert prompts["text"].to_list() == [p.text for p in asked]
    for p in asked:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": p.text}], tokenize=False, add_generation_prompt=True
        )
        want = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        got = tokens.filter((pl.col("prompt_id") == p.prompt_id) & (pl.col("segment") == "prompt"))
        assert got["token_id"].to_list() == want
        assert rendered == f"<bos>User: {p.text}\nAssistant:"  # tiny-ref's chat format (behaviour/chat.py)


def test_chat_without_a_template_is_refused_before_a_run_exists(
    tiny_ref_model: object, tmp_path: Path
) -> None:
    bare = replace(tiny_ref_model, tokenizer=_without_template(tiny_ref_model.tokenizer))  # type: ignore[type-var, attr-defined]
    db = tmp_path / "bare.duckdb"
    with pytest.raises(ChatTemplateError) as err:
        capture(bare, [Prompt(0, "hi", "x")], db, chat=True, progress=False)
    assert str(err.value) == (
        f"--chat needs a chat template, and the tokenizer of {bare.name} has none: capture without --chat "
        "(and write the prompts in the model's chat format yourself), or set tokenizer.chat_template"
    )
    with Store(db) as store:
        assert store.runs().height == 0


def _without_template(tokenizer: object) -> object:
    import copy

    bare = copy.copy(tokenizer)
    bare.chat_template = None  # type: ignore[attr-defined]
    return bare


def test_a_prompt_meta_holding_the_response_key_is_refused(tiny_ref_model: object) -> None:
    tok = tiny_ref_model.tokenizer  # type: ignore[attr-defined]
    clash = Prompt(4, "User: hi\nAssistant:", "x", meta={RESPONSE_META_KEY: "mine"})
    batch = pad_batch([clash], [tok(clash.text)["input_ids"]], tok, padding_side="right")
    with pytest.raises(
        ValueError, match=r"prompt 4: its meta has a 'generated' key, where capture --generate"
    ):
        continue_batch(
            tiny_ref_model.model,
            tok,
            batch,
            max_new_tokens=2,
            padding_side="right",
            device=torch.device("cpu"),  # type: ignore[attr-defined]
        )


# -- refusals that need no model ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"generate": -1}, "generate must be >= 0 (new tokens per prompt; 0: read the prompts only), got -1"),
        (
            {"generate": 4, "temperature": 0.5},
            "temperature and top_p shape sampling: add sample=True (--sample)",
        ),
        (
            {"sample": True},
            "sample=True (--sample) samples generated tokens: give generate=N (--generate N) too",
        ),
        ({"generate": 4, "sample": True, "temperature": 0.0}, "temperature must be > 0, got 0.0"),
        ({"generate": 4, "sample": True, "top_p": 1.5}, "top_p must be in (0, 1], got 1.5"),
        ({"generate": 4, "tp_plan": "auto"}, "generate is not supported under tensor parallelism"),
        (
            {"generate": 4, "backend": "transformer_lens"},
            "generate works with the hooks and nnsight backends",
        ),
    ],
)
def test_generation_options_are_checked(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        CaptureOptions(**options)  # type: ignore[arg-type]


def test_valid_generation_options_are_accepted() -> None:
    opts = CaptureOptions(
        generate=4, sample=True, seed=3, temperature=0.7, top_p=0.9, chat=True, backend="nnsight"
    )
    assert (opts.generate, opts.sample, opts.temperature, opts.top_p) == (4, True, 0.7, 0.9)


def test_a_model_that_cannot_generate_is_refused() -> None:
    class EncoderDecoder(torch.nn.Module):
        config = type("Config", (), {"is_encoder_decoder": True})()

        def generate(self) -> None: ...

    with pytest.raises(
        ValueError, match="--generate continues a decoder-only model's text, and m is an encoder"
    ):
        check_generation(EncoderDecoder(), "m", 4, None)
    decoder = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="m has none"):
        check_generation(decoder, "m", 4, None)
    decoder.generate = lambda: None  # type: ignore[assignment]
    check_generation(decoder, "m", 4, 5)  # room for a prompt of one token: accepted
    with pytest.raises(
        ValueError, match="--generate 5 leaves no room for a prompt in the model's context of 5"
    ):
        check_generation(decoder, "m", 5, 5)


def test_prompt_and_response_share_the_context() -> None:
    assert token_limit(None, 100, 10) == (90, "the model's context less --generate 10")
    assert token_limit(50, 100, 10) == (50, "--max-length")  # --max-length limits the prompt alone
    assert token_limit(None, 100) == (100, "the model's context")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--seed", "3"],
            "--seed shapes the sampling of --sample: add --sample (and --generate N), or leave --seed out",
        ),
        (["--generate", "4", "--top-p", "0.5"], "--top-p shapes the sampling of --sample"),
        (["--sample"], "--sample samples the generated tokens: give --generate N too"),
    ],
)
def test_cli_refuses_sampling_options_without_sampling(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "capture",
            "--model",
            "tiny:qwen2_moe",
            "--probe",
            "p.jsonl",
            "--db",
            str(tmp_path / "x.duckdb"),
            *args,
        ],
    )
    assert result.exit_code != 0
    assert message in result.output
    assert not (tmp_path / "x.duckdb").exists()
