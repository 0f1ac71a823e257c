"""The model zoo: reference MoE models built or trained here.

- ``tiny-ref`` (:mod:`workbench.zoo.tiny_ref`): a small Qwen2-MoE trained on the committed corpora;
  weights, tokenizer and model card under ``datasets/tiny-ref``.
- ``smollm2-moe`` (:mod:`workbench.zoo.smollm2`): SmolLM2-135M-Instruct with middle-layer FFNs
  decomposed into experts.

Submodules are imported on demand (training pulls in torch and transformers).
"""
