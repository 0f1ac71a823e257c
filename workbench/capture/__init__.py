"""Capture engine: backends (hooks, nnsight, transformer_lens), batching, the streaming writer.

A plain package: the capture function is :func:`workbench.capture.engine.capture`, exported as
``wb.capture_routing(model, probes, db)`` (a name that is not this package's, so importing a
submodule cannot shadow it). Importing the package loads nothing heavy; ``engine`` brings torch.
"""
