"""Capture engine: backends (hooks, nnsight, transformer_lens), batching, the streaming writer."""
