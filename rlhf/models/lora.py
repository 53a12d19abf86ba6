"""LoRA on a training model (PEFT), and the policy it stands for as plain HF-named weights.

The learner trains low-rank adapters beside frozen base weights. Everything outside the
learner (the rollout engines, `final/`, a user's `from_pretrained`) wants the policy itself:
`merged_parameters` yields it tensor by tensor, under the base model's own names, each LoRA
layer's weight merged (W + scaling * B @ A) on the fly. So the weight-sync path, its
manifest and the HF export take a LoRA policy exactly as they take a fully trained one.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from rlhf.config import LoraConfig

PEFT_PREFIX = "base_model.model."
BASE = ".base_layer"
ADAPTER = "default"  # PEFT's name for the one adapter a model gets


def apply_lora(model: torch.nn.Module, cfg: LoraConfig) -> torch.nn.Module:
    """`model` with LoRA adapters on `cfg.target_modules`; only the adapters train."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = cfg.target_modules
    peft_cfg = PeftLoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, peft_cfg)
    peft_model.train()
    return peft_model


def is_lora(module: torch.nn.Module) -> bool:
    return any(".lora_A." in name for name, _ in module.named_parameters())


def base_name(peft_name: str) -> str:
    """`base_model.model.model.layers.0.q_proj.base_layer.weight` -> `model.layers.0.q_proj.weight`."""
    return peft_name.removeprefix(PEFT_PREFIX).replace(BASE, "")


def _lora_part(name: str) -> tuple[str, str] | None:
    """(layer path, "A" | "B") for an adapter matrix's parameter name, else None."""
    for part in ("A", "B"):
        marker = f".lora_{part}.{ADAPTER}.weight"
        if name.endswith(marker):
            return name[: -len(marker)], part
    return None


def _layer_of_base_weight(name: str) -> str | None:
    suffix = f"{BASE}.weight"
    return name[: -len(suffix)] if name.endswith(suffix) else None


def merged_parameters(
    module: torch.nn.Module,
    gathered: Iterator[tuple[str, torch.Tensor]],
) -> Iterator[tuple[str, torch.Tensor]]:
    """(base name, tensor) of the merged policy, from `gathered`: the (PEFT name, full
    tensor) of every parameter of `module` in `named_parameters` order (e.g.
    `rlhf.training.export.full_parameters`, which gathers ZeRO-3 slices). Iterate to the
    end: under ZeRO-3 each gather is a collective."""
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in gathered:
        part = _lora_part(name)
        layer = part[0] if part else _layer_of_base_weight(name)
        if layer is None:
            yield base_name(name), tensor
            continue
        parts = pending.setdefault(layer, {})
        parts[part[1] if part else "W"] = tensor
        if len(parts) == 3:
            del pending[layer]
            lora_layer = module.get_submodule(layer)
            scaling = float(lora_layer.scaling[ADAPTER])
            w, a, b = parts["W"], parts["A"], parts["B"]
            merged = w + scaling * (b.to(w.dtype) @ a.to(w.dtype))
            yield base_name(f"{layer}.weight"), merged
    if pending:
        raise RuntimeError(f"LoRA layers with a missing part: {sorted(pending)}")


def file_name(peft_name: str) -> str:
    """An adapter matrix's name in PEFT's files, without the adapter's own name
    (`...q_proj.lora_A.default.weight` -> `...q_proj.lora_A.weight`): what
    `PeftModel.from_pretrained` and vLLM read."""
    return peft_name.replace(f".{ADAPTER}.weight", ".weight")


def adapter_parameters(
    gathered: Iterator[tuple[str, torch.Tensor]],
) -> Iterator[tuple[str, torch.Tensor]]:
    """(PEFT file name, full tensor) of the adapter matrices among (PEFT name, full tensor)
    pairs, consuming all of them (under ZeRO-3 each gather is a collective)."""
    for name, tensor in gathered:
        if _lora_part(name) is not None:
            yield file_name(name), tensor


def adapter_state(gathered: Iterator[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """`adapter_parameters` as a state dict of CPU copies (for a file)."""
    return {name: t.detach().cpu().clone() for name, t in adapter_parameters(gathered)}


ADAPTER_FOLDER = "adapter"  # final/adapter: the adapter alone, beside the merged model


def policy_parameters(module: torch.nn.Module, device=None) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, full tensor) of the policy `module` stands for: its own parameters, or for a
    LoRA model the base's with the adapters merged. A collective under ZeRO-3."""
    from rlhf.training.export import full_parameters

    named = full_parameters(module, device)
    return merged_parameters(module, named) if is_lora(module) else named


def policy_manifest(module: torch.nn.Module) -> list:
    """`rlhf.training.export.manifest` of the policy `policy_parameters` yields."""
    from rlhf.sync.buckets import ParamSpec
    from rlhf.training.export import manifest

    if not is_lora(module):
        return manifest(module)
    return [
        ParamSpec(base_name(s.name), s.shape, s.dtype)
        for s in manifest(module)
        if _lora_part(s.name) is None
    ]


def plain_model(module: torch.nn.Module) -> torch.nn.Module:
    """What saves an HF folder of the policy: the model itself, or the LoRA model's base
    (whose `save_pretrained` writes the merged state dict it is handed)."""
    return module.get_base_model() if is_lora(module) else module


def save_adapter(module: torch.nn.Module, adapter: dict[str, torch.Tensor], path: str) -> None:
    """The adapter in PEFT's layout (adapter_config.json + adapter_model.safetensors), which
    `PeftModel.from_pretrained` and vLLM's LoRA loader read."""
    from pathlib import Path

    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    module.peft_config[ADAPTER].save_pretrained(str(out))
    save_file(
        {k: v.contiguous() for k, v in adapter.items()}, str(out / "adapter_model.safetensors")
    )


def linear_layer_names(model: torch.nn.Module) -> list[str]:
    """The distinct last names of the model's linear layers (what target_modules names)."""
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear)
        }
    )


def check_targets(cfg: LoraConfig, model_path: str) -> None:
    """Raise ValueError, naming the model's linear layers, where `cfg.target_modules` picks
    none of them: PEFT would fail inside the learner, after every pool had started. The
    model is built on the meta device (no weights read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    try:
        apply_lora(model, cfg)
    except ValueError as err:
        raise ValueError(
            f"{err} (the model's linear layers: {', '.join(linear_layer_names(model))})"
        ) from None


def adapter_manifest(module: torch.nn.Module) -> list:
    """The manifest of what `adapter_parameters` yields: adapter-only syncs send these."""
    from rlhf.sync.buckets import ParamSpec
    from rlhf.training.export import manifest

    return [
        ParamSpec(file_name(s.name), s.shape, s.dtype)
        for s in manifest(module)
        if _lora_part(s.name) is not None
    ]


def adapter_config_of(cfg: LoraConfig, names: list[str]) -> dict:
    """A PEFT adapter_config.json for adapter tensors named `names` (PEFT file names): the
    target modules are the layers they adapt, as the learner's PEFT resolved them."""
    targets = sorted({n.rsplit(".", 3)[0].rsplit(".", 1)[-1] for n in names})
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": 0.0,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
    }


def is_adapter_folder(path: str) -> bool:
    """A PEFT adapter folder (`final/adapter`) rather than a whole model."""
    from pathlib import Path

    folder = Path(path)
    return (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()


def merge_adapter_folder(adapter: str, out: str) -> str:
    """The model an adapter folder stands for, merged onto the base its adapter_config.json
    names (`base_model_name_or_path`), written to `out` as a plain HF folder; returns `out`."""
    import json
    from pathlib import Path

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = json.loads((Path(adapter) / "adapter_config.json").read_text())
    base_path = base.get("base_model_name_or_path")
    if not base_path or not Path(base_path).is_dir():
        raise ValueError(
            f"{adapter!r} is a LoRA adapter whose base ({base_path!r}) is not a folder here: "
            "give the merged model (the run's final/) instead"
        )
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_path).save_pretrained(out)
    return out
