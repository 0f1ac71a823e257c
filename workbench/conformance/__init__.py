"""The conformance sweep: every MoE architecture of the installed transformers, captured and checked.

It sits above capture (floor 3, beside analysis) because it runs the real capture backend on tiny
models of every architecture and checks what it records against the adapter registry of
:mod:`workbench.models`. :mod:`~workbench.conformance.supported` runs the sweep and writes
docs/supported-models.md (``python -m workbench.conformance.supported``);
:mod:`~workbench.conformance.sweep_diff` compares a fresh sweep with those docs (``make test-latest``).
Submodules are imported on demand.
"""
