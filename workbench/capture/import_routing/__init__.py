"""Import routed expert ids returned by serving engines (vLLM, SGLang) as a run of the store.

This is the path for models that no single machine can hold: the engine serves the model across
many GPUs and returns, per request, the top-k expert ids each token was routed to in each layer.
:func:`import_routing` turns a JSONL file of those outputs into one run with ``routing.experts``
filled and ``weights``/``logits`` NULL (``moe-workbench import-routing``). Formats, coverage and
layer mapping: docs/import-routing.md.
"""

from workbench.capture.import_routing.formats import FORMATS, EngineSequence, Format, RoutingImportError
from workbench.capture.import_routing.importer import ImportResult, import_routing

__all__ = ["FORMATS", "EngineSequence", "Format", "ImportResult", "RoutingImportError", "import_routing"]
