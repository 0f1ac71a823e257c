"""Named model sources (:mod:`workbench.models.sources`): the zoo fills the registry, the loader reads it.

The loader hard-codes no zoo name and imports no zoo module; ``tiny-ref`` and ``smollm2-moe`` reach
it through the ``moe_workbench.model_sources`` entry point that the zoo declares in pyproject.toml.
"""

from __future__ import annotations

import ast
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import pytest

from workbench.models import sources
from workbench.models.loading import ModelLoadError, load_model
from workbench.models.sources import (
    ENTRY_POINT_GROUP,
    UnknownSourceError,
    find_source,
    get_source,
    register_source,
    registered_sources,
    unregister_source,
)
from workbench.models.tiny import byte_tokenizer, tiny_model

pytestmark = pytest.mark.integration

LOADING = Path(sources.__file__).with_name("loading.py")


def _tiny_mixtral() -> tuple[Any, Any]:
    return tiny_model("mixtral"), byte_tokenizer()


def test_the_zoo_registers_its_names_through_the_entry_point() -> None:
    declared = {ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert "workbench.zoo.model_sources:register" in declared
    names = registered_sources()
    assert {"tiny-ref", "smollm2-moe"} <= set(names)
    assert names["tiny-ref"].loader.__module__ == "workbench.zoo.model_sources"


def test_an_unknown_name_lists_the_registered_ones() -> None:
    with pytest.raises(UnknownSourceError, match="no model source named 'tiny-reff'") as err:
        get_source("tiny-reff")
    assert "registered: smollm2-moe, tiny-ref" in str(err.value) and "tiny:<model_type>" in str(err.value)
    assert find_source("tiny-reff") is None


def test_a_source_registered_by_a_test_is_loadable() -> None:
    register_source("test-mixtral", _tiny_mixtral, "a tiny random Mixtral, registered by a test")
    try:
        assert register_source("test-mixtral", _tiny_mixtral, "again").loader is _tiny_mixtral  # no-op
        with pytest.raises(ValueError, match="already registered"):
            register_source("test-mixtral", lambda: _tiny_mixtral(), "another loader")
        loaded = load_model("test-mixtral")
        assert loaded.name == "test-mixtral" and loaded.architecture == "MixtralForCausalLM"
        assert loaded.layers and "test-mixtral" in registered_sources()
    finally:
        unregister_source("test-mixtral")
    assert find_source("test-mixtral") is None
    with pytest.raises(UnknownSourceError):
        unregister_source("test-mixtral")


@pytest.mark.parametrize("name", ["", " padded", "tiny:mixtral"])
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid source name"):
        register_source(name, _tiny_mixtral, "")


def test_tiny_model_types_stay_built_in() -> None:
    loaded = load_model("tiny:mixtral")
    assert loaded.architecture == "MixtralForCausalLM"
    with pytest.raises(ModelLoadError, match="no tiny model for architecture"):
        load_model("tiny:no_such_architecture")


def test_an_unbuilt_smollm2_moe_says_how_to_build_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOE_WORKBENCH_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"smollm2-moe is not built yet .*zoo build smollm2-moe"):
        load_model("smollm2-moe")


def test_the_loader_names_no_zoo_model_and_imports_no_zoo() -> None:
    text = LOADING.read_text(encoding="utf-8")
    assert "tiny-ref" not in text and "smollm2" not in text
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert not any(str(m).startswith("workbench.zoo") for m in imported), imported


def test_a_broken_entry_point_is_reported_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = EntryPoint("broken", "no_such_module_for_this_test:register", ENTRY_POINT_GROUP)
    monkeypatch.setattr(sources, "entry_points", lambda group: [broken])
    monkeypatch.setattr(sources, "_SOURCES", {})
    monkeypatch.setattr(sources, "_FAILED", {})
    monkeypatch.setattr(sources, "_discovered", False)
    with pytest.warns(RuntimeWarning, match="no_such_module_for_this_test"):
        assert registered_sources() == {}
    with pytest.raises(UnknownSourceError, match="failed to register: broken = no_such_module_for_this_test"):
        get_source("tiny-ref")
