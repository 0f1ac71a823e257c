"""``workbench.analysis`` loads its analyses on first use, and still registers the summary parts on import."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import workbench.analysis as analysis
from workbench.store import summaries

pytestmark = pytest.mark.unit


def test_every_exported_name_is_the_function_of_its_home_module() -> None:
    eager = {"build_logit_summaries": "summaries", "coactivation": "coactivation"}
    assert set(analysis.__all__) == {*analysis._HOMES, *eager}
    for name, home in {**analysis._HOMES, **eager}.items():
        assert getattr(analysis, name) is getattr(importlib.import_module(f"workbench.analysis.{home}"), name)
    assert callable(analysis.coactivation), "the function, not the submodule of the same name"
    assert set(dir(analysis)) >= set(analysis.__all__)


def test_an_unknown_name_is_an_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="no attribute 'no_such_analysis'"):
        analysis.no_such_analysis  # noqa: B018


def test_importing_the_package_registers_the_summary_parts() -> None:
    assert set(summaries.registered()) == set(summaries.PART_TABLES) - {summaries.COUNTS}


def test_the_summary_builders_load_without_scikit_learn() -> None:
    """What ``moe-workbench capture`` imports to build every part: not the probes' scikit-learn."""
    code = (
        "import sys, workbench.analysis.summaries\n"
        "from workbench.store import summaries\n"
        "print(sorted(summaries.registered()), 'sklearn' in sys.modules, 'workbench.analysis.information' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("]")[1].split() == ["False", "False"], out
    assert "'logits'" in out and "'pairs'" in out and "'transitions'" in out
