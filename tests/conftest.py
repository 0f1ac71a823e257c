"""Shared fixtures: tiny models built from configs, a byte tokenizer, temp stores."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from hypothesis import HealthCheck, settings

from workbench.store import Store

# Rich wraps CLI output at the terminal width, which test workers (pytest-xdist, CI) do not have: one
# wide width for every test, so an assertion on a message never depends on where a line broke.
os.environ["COLUMNS"] = "250"

if TYPE_CHECKING:
    from workbench.conformance.supported import Result

warnings.filterwarnings("ignore", category=FutureWarning)

# Hypothesis (the fuzz tests, tests/test_fuzz_*.py): CI runs a fixed, reproducible set of examples
# (derandomize: the same inputs on every run, no example database written); HYPOTHESIS_PROFILE=dev
# draws new random inputs each run and remembers failures in .hypothesis/. MOE_FUZZ_SCALE=20
# multiplies every fuzz test's example count (tests/fuzz_support.py) for a longer local run.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Tiny models: thread start-up costs more than the matmuls (1.4 s vs 3 ms per forward on a loaded
# 2-core machine), so tests run torch single-threaded.
torch.set_num_threads(1)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "runs.duckdb"


@pytest.fixture
def st(db: Path) -> Iterator[Store]:
    """A writable store in a temp file, closed after the test."""
    with Store(db) as s:
        yield s


@pytest.fixture
def probe_file(tmp_path: Path) -> Path:
    import json

    rows = [
        {"text": "def f(x):\n    return x + 1", "label": "code", "pair_id": "a"},
        {"text": "The cat sat on the mat.", "label": "prose", "pair_id": "a"},
        {"text": "12 + 30 = 42", "label": "math", "split": "test", "meta": {"source": "gen"}},
        {"text": "Le chat est sur le tapis, et il dort profondément.", "label": "french"},
        {"text": "x", "label": "prose"},
    ]
    path = tmp_path / "probe.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="session")
def sweep_results() -> dict[str, Result]:
    """The conformance sweep, run once per pytest session: ``{model_type: Result}``.

    tests/test_sweep.py checks it; tests/test_interventions_sweep.py intervenes on every architecture
    it passes. Built on first use, so a session that needs neither never pays for it.
    """
    from workbench.conformance.supported import sweep

    return {r.model_type: r for r in sweep()}


#: The test tiers (pyproject.toml registers them). Each test module sets one with a module-level
#: ``pytestmark``: unit (no model, no capture, no browser: ``make test-fast``), integration (loads or
#: builds a model, captures, or runs a pipeline end to end) or browser (headless Chromium).
TIERS = ("unit", "integration", "browser")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse the whole run when a collected test has no tier, or more than one.

    It runs before ``-m`` deselects anything, so ``pytest -m unit`` refuses an untiered test too
    instead of silently leaving it out; a new test module has to choose its tier.
    """
    wrong: dict[str, set[str]] = {}
    for item in items:
        tiers = {mark.name for mark in item.iter_markers() if mark.name in TIERS}
        if len(tiers) != 1:
            wrong.setdefault(item.nodeid.split("::")[0], set()).update(tiers)
    if wrong:
        lines = [f"  {module}: {', '.join(sorted(t)) or 'no tier'}" for module, t in sorted(wrong.items())]
        raise pytest.UsageError(
            "every test needs exactly one tier marker (" + ", ".join(TIERS) + "); set it once per module "
            "with `pytestmark = pytest.mark.<tier>` (tests/conftest.py says which is which):\n"
            + "\n".join(lines)
        )


@pytest.fixture(scope="session")
def tiny_ref_model() -> object:
    """tiny-ref (datasets/tiny-ref) loaded once per pytest session, on the CPU."""
    from workbench.models.loading import load_model
    from workbench.zoo import tiny_ref

    return load_model(str(tiny_ref.model_dir()), device="cpu")


#: The prompts of :func:`generated_run`: refusal probes asked in tiny-ref's chat format, so that some
#: responses end with <eos> (the refusal) and others run to --generate's limit (the compliance).
GENERATED_PROBES = 6


@pytest.fixture(scope="session")
def generated_run(tmp_path_factory: pytest.TempPathFactory, tiny_ref_model: object) -> tuple[Path, Path, str]:
    """(store, probe file, run id) of a ``capture --generate 12`` of tiny-ref, greedy, batches of 3.

    tests/test_capture_generate.py checks its rows; tests/test_segments.py filters on its segments.
    """
    import json

    from workbench.behaviour import chat
    from workbench.capture.engine import capture

    root = tmp_path_factory.mktemp("generated")
    source = Path(__file__).resolve().parents[1] / "probes" / "refusal.jsonl"
    rows = [json.loads(line) for line in source.read_text().splitlines()[:GENERATED_PROBES]]
    for row in rows:
        row["text"] = chat.prompt(row["text"])
    probe = root / "asked.jsonl"
    probe.write_text("".join(json.dumps(r) + "\n" for r in rows))
    db = root / "generated.duckdb"
    capture(tiny_ref_model, probe, db, run_id="gen", batch_size=3, generate=12, write_rows=1, progress=False)  # type: ignore[arg-type]
    return db, probe, "gen"
