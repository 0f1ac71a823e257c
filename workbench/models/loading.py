"""Load a model and its tokenizer from a local directory, a hub id, a named source, or memory.

Names such as the zoo's reference models are looked up in :mod:`workbench.models.sources`, which
their packages fill; this module knows none of them. ``tiny:<model_type>`` is built in.

Safe by default: weights load from safetensors (or GGUF), never via pickle, and remote code runs
only with ``trust_remote_code=True``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from workbench.models.discovery import MoELayer, find_moe_layers
from workbench.models.sources import BUILT_IN_PREFIX, find_source, registered_sources

#: Files of which at least one must sit in a local model directory for its tokenizer to load.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


class ModelLoadError(RuntimeError):
    """A model or its tokenizer could not be loaded; the message says why and what to do."""


@dataclass
class LoadedModel:
    """A model ready for capture: the module, its tokenizer, a display name and its MoE layers."""

    model: nn.Module
    tokenizer: Any
    name: str
    layers: list[MoELayer]

    @property
    def architecture(self) -> str:
        return type(self.model).__name__

    @property
    def device(self) -> torch.device:
        """Where input ids go: the input embedding's device (the CPU when its weights are offloaded)."""
        embeddings = getattr(self.model, "get_input_embeddings", lambda: None)()
        weight = getattr(embeddings, "weight", None)
        device = weight.device if isinstance(weight, torch.Tensor) else next(self.model.parameters()).device
        return torch.device("cpu") if device.type == "meta" else device


DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {', '.join(sorted(DTYPES))}") from None


#: transformers' and accelerate's named placements; anything else must be an explicit map
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
#: a tensor-parallel plan: ``"auto"`` takes the model's own (``base_model_tp_plan`` in its config)
TpPlan = Literal["auto"]
#: a device map: a strategy name, or module name → device (``"cpu"``, ``"disk"``, ``"cuda:1"``, ``0`` ...)
DeviceMap = str | dict[str, str | int]


def parse_device_map(text: str) -> DeviceMap:
    """A device map from the CLI: a strategy name, a JSON object, or the path of a JSON file.

    The map is transformers' ``device_map``: module name → device (an int is a CUDA index, ``"disk"``
    offloads to ``offload_folder``), where ``""`` names the whole model.
    """
    if text in DEVICE_MAP_STRATEGIES:
        return text
    source = "the --device-map value"
    raw = text
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise ModelLoadError(
                f"device map {text!r} is neither a strategy ({', '.join(DEVICE_MAP_STRATEGIES)}), a JSON object "
                'nor a JSON file; give e.g. --device-map auto or --device-map \'{"model.layers.1": "disk", "": "cpu"}\''
            )
        source, raw = f"device map file {path}", path.read_text(encoding="utf-8")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{source} is not valid JSON ({exc})") from exc
    return check_device_map(value, source)


def check_device_map(value: Any, source: str = "device_map") -> DeviceMap:
    """``value`` as a device map, or a :class:`ModelLoadError` naming what is wrong."""
    if isinstance(value, str):
        if value not in DEVICE_MAP_STRATEGIES:
            raise ModelLoadError(
                f"{source}: unknown strategy {value!r}; choose {', '.join(DEVICE_MAP_STRATEGIES)}"
            )
        return value
    if not isinstance(value, dict) or not value:
        raise ModelLoadError(
            f"{source} must be a non-empty JSON object of module name → device, got {value!r}"
        )
    out: dict[str, str | int] = {}
    for name, device in value.items():
        if isinstance(device, bool) or not isinstance(device, (str, int)):
            raise ModelLoadError(
                f"{source}: device of {name!r} must be a string or a CUDA index, got {device!r}"
            )
        if isinstance(device, str) and device != "disk":
            try:
                torch.device(device)
            except RuntimeError:
                raise ModelLoadError(
                    f"{source}: {name!r} → {device!r} is not a device; use cpu, disk, cuda:N, mps or an index"
                ) from None
        out[str(name)] = device
    return out


def _dispatch(model: nn.Module, device_map: DeviceMap, offload_folder: str | Path | None) -> nn.Module:
    """Place an in-memory model's modules by ``device_map`` with accelerate (as from_pretrained does)."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    if isinstance(device_map, str):
        no_split = list(getattr(model, "_no_split_modules", None) or [])
        memory = None
        if device_map != "sequential":
            memory = get_balanced_memory(
                model, no_split_module_classes=no_split, low_zero=device_map == "balanced_low_0"
            )
        placement: dict[str, Any] = infer_auto_device_map(
            model, max_memory=memory, no_split_module_classes=no_split
        )
    else:
        modules = dict(model.named_modules())
        unknown = [name for name in device_map if name and name not in modules]
        if unknown:
            raise ModelLoadError(
                f"device_map names module(s) the model does not have: {', '.join(unknown)}; "
                "list them with [n for n, _ in model.named_modules()]"
            )
        placement = dict(device_map)
    if "disk" in placement.values() and offload_folder is None:
        raise ModelLoadError(
            "device_map offloads to 'disk': give an offload_folder (--offload-folder DIR) for the weights"
        )
    try:
        placed: nn.Module = dispatch_model(model, device_map=placement, offload_dir=offload_folder)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot place the model by device_map {placement}: {exc}") from exc
    return placed


def _auto_model(config: Any) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if (
        getattr(config, "is_encoder_decoder", False)
        or config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    ):
        return AutoModelForSeq2SeqLM
    return AutoModelForCausalLM


def load_pretrained(
    source: str,
    *,
    trust_remote_code: bool,
    dtype: torch.dtype | None,
    local: bool,
    device_map: DeviceMap | None = None,
    offload_folder: str | Path | None = None,
    tp_plan: TpPlan | None = None,
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a Hugging Face directory (``local``) or hub id, safely.

    Weights load from safetensors, or from the directory's GGUF file when it has no safetensors;
    every failure is a :class:`ModelLoadError` that says what to do.
    """
    from transformers import AutoConfig, AutoTokenizer

    where = "directory" if local else "hub id"
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        hint = (
            "the directory needs a config.json"
            if local
            else "the model hub (or its local cache) must be reachable; download the model where it is and pass "
            "its local directory instead"
        )
        if not local and "/" not in source:  # perhaps a mistyped model name
            names = ", ".join(registered_sources()) or "none registered"
            hint += f"; nor is it a model name ({names}, or {BUILT_IN_PREFIX}<model_type>)"
        raise ModelLoadError(f"cannot load {where} {source!r}: {exc}. Hint: {hint}.") from exc
    no_tokenizer = (
        f"{source!r} has no usable tokenizer{{why}}. Save one next to the weights with "
        "tokenizer.save_pretrained(dir), or pass an in-memory model together with its tokenizer."
    )
    if local and not any((Path(source) / name).exists() for name in TOKENIZER_FILES):
        raise ModelLoadError(
            no_tokenizer.format(why=f" (none of {', '.join(TOKENIZER_FILES)} in the directory)")
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(no_tokenizer.format(why=f" ({exc})")) from exc
    if len(tokenizer) < 2:  # transformers 5 builds an empty tokenizer when files are missing
        raise ModelLoadError(no_tokenizer.format(why=" (it loaded with an empty vocabulary)"))
    cls = _auto_model(config)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
        if offload_folder is not None:
            kwargs["offload_folder"] = str(offload_folder)
    if tp_plan is not None:  # tensor parallel across the ranks of a torchrun job
        from transformers.distributed.configuration_utils import DistributedConfig

        kwargs["distributed_config"] = DistributedConfig(tp_plan=tp_plan)
    gguf = sorted(Path(source).glob("*.gguf")) if local else []
    if gguf and not any(Path(source).glob("*.safetensors")):
        kwargs["gguf_file"] = gguf[0].name
    else:
        kwargs["use_safetensors"] = True
    from safetensors import SafetensorError

    try:
        model = cls.from_pretrained(source, **kwargs)
    except SafetensorError as exc:  # a truncated or overwritten file: its header no longer parses
        raise ModelLoadError(
            f"a safetensors file of {source!r} is damaged ({exc}); download or save the checkpoint again"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot load weights of {source!r}: {exc}. moe-workbench loads safetensors or GGUF only "
            "(never pickled .bin files); convert the checkpoint with save_pretrained(safe_serialization=True)."
        ) from exc
    return model, tokenizer


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device this process can use, else a :class:`ModelLoadError` saying why.

    Checked before a model loads, so ``--device cuda`` on a machine without CUDA, ``cuda:7`` on a
    machine with two GPUs, or a typo fail in one line instead of a traceback from ``model.to``.
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelLoadError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ModelLoadError(
                f"device {str(device)!r}: this machine has no CUDA device (or torch {torch.__version__} was "
                "built without CUDA); use --device cpu"
            )
        if parsed.index is not None and parsed.index >= count:
            raise ModelLoadError(
                f"device {str(device)!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
        return parsed
    if parsed.type in ("cpu", "meta"):
        return parsed
    try:
        torch.empty(0, device=parsed)
    except (RuntimeError, AssertionError) as exc:
        raise ModelLoadError(
            f"device {str(device)!r} is not available here ({exc}); use cpu or cuda"
        ) from None
    return parsed


def _named(name: str) -> tuple[nn.Module, Any] | None:
    """``(model, tokenizer)`` of a registered source or of ``tiny:<model_type>``; None for other names."""
    source = find_source(name)
    if source is not None:
        return source.loader()
    if name.startswith(BUILT_IN_PREFIX):
        from workbench.models.tiny import byte_tokenizer, tiny_model

        model_type = name.removeprefix(BUILT_IN_PREFIX)
        try:
            return tiny_model(model_type), byte_tokenizer()
        except (KeyError, ValueError) as exc:
            raise ModelLoadError(f"no tiny model for architecture {model_type!r}: {exc}") from exc
    return None


def load_model(
    source: str | Path | nn.Module,
    tokenizer: Any = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    name: str | None = None,
    device_map: DeviceMap | None = None,
    offload_folder: str | Path | None = None,
    tp_plan: TpPlan | None = None,
) -> LoadedModel:
    """Load ``source`` and discover its MoE layers.

    ``source`` is an in-memory model (then ``tokenizer`` is required), a registered source name
    (:func:`workbench.models.sources.registered_sources`) or ``tiny:<model_type>`` such as
    ``tiny:qwen2_moe``, a local Hugging Face directory, or a hub id (needs the hub or its cache).

    ``device_map`` divides a model too large for one device across devices, the CPU and disk
    (transformers' ``device_map``: a strategy such as ``"auto"`` or module name → device; ``"disk"``
    needs ``offload_folder``). Directories and hub ids load straight into place; in-memory and named
    models are placed by accelerate. It excludes ``device``.

    ``tp_plan`` (``"auto"``: the model's own plan) shards a directory or hub checkpoint across the
    ranks of a torchrun job with transformers' tensor parallelism (``DistributedConfig``).
    """
    if tp_plan is not None:
        if device_map is not None or device is not None:
            raise ModelLoadError(
                "a tp_plan places the model on the ranks' devices: give no device or device_map"
            )
        if (
            isinstance(source, nn.Module)
            or find_source(str(source))
            or str(source).startswith(BUILT_IN_PREFIX)
        ):
            raise ModelLoadError(
                "a tp_plan shards a checkpoint as transformers loads it: give a model directory or hub id "
                "(save an in-memory model with save_pretrained first)"
            )
    if device is not None:
        device = check_device(device)
    if device_map is not None:
        device_map = check_device_map(device_map)
        if device is not None:
            raise ModelLoadError("give a device and a device_map, not both: the map places every module")
    torch_dtype = resolve_dtype(dtype)
    if isinstance(source, nn.Module):
        if tokenizer is None:
            raise ModelLoadError("an in-memory model needs its tokenizer: load_model(model, tokenizer)")
        model, display = source, name or type(source).__name__
    else:
        text = str(source)
        named = _named(text)
        if named is not None:
            model, tok = named
        else:
            local = Path(text).exists()
            if not local and (text.startswith((".", "/")) or text.count("/") > 1):
                raise ModelLoadError(f"{text!r}: no such model directory")
            model, tok = load_pretrained(
                text,
                trust_remote_code=trust_remote_code,
                dtype=torch_dtype,
                local=local,
                device_map=device_map,
                offload_folder=offload_folder,
                tp_plan=tp_plan,
            )
        tokenizer = tokenizer or tok
        display = name or text
    placed = getattr(model, "hf_device_map", None) is not None
    if torch_dtype is not None and not placed:
        model = model.to(torch_dtype)
    if device_map is not None and not placed:
        model = _dispatch(model, device_map, offload_folder)
    if device is not None:
        model = model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=display, layers=find_moe_layers(model))
