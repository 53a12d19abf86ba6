"""Full weights out of a (possibly ZeRO-3 partitioned) model: for weight sync, saving, checks.

Under ZeRO-3 each rank holds a slice of every large parameter; gathering one is a collective,
so every rank must walk `full_parameters` to its end, in the same order. Parameters are
gathered one at a time and copied out, so no rank ever holds the whole model twice; the
consumer (the sync group's bucketing, a state dict) decides how many copies live at once.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from rlhf.sync.buckets import ParamSpec

Named = Iterator[tuple[str, torch.Tensor]]


def is_partitioned(p: torch.nn.Parameter) -> bool:
    """A ZeRO-3 parameter (DeepSpeed tags them with a ds_id)."""
    return hasattr(p, "ds_id")


def full_shape(p: torch.nn.Parameter) -> tuple[int, ...]:
    return tuple(p.ds_shape) if is_partitioned(p) else tuple(p.shape)


def manifest(module: torch.nn.Module) -> list[ParamSpec]:
    """HF state-dict names, full shapes and dtypes, in `full_parameters` order."""
    return [
        ParamSpec(name, full_shape(p), str(p.dtype).removeprefix("torch."))
        for name, p in module.named_parameters()
    ]


def full_parameters(module: torch.nn.Module, device: torch.device | str | None = None) -> Named:
    """(name, full tensor) for every parameter. Collective under ZeRO-3: iterate to the end.

    Tensors of gathered (ZeRO-3) parameters are private copies; others are the live
    parameter data (moved to `device` if given), valid until the next optimizer step.
    """
    import deepspeed

    for name, p in module.named_parameters():
        if is_partitioned(p):
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                t = p.data.detach().to(device or p.device, copy=True)
            yield name, t
        else:
            yield name, p.data.detach().to(device or p.device)


def full_gradients(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """Every parameter's full fp32 gradient, between the last backward of a step and the
    optimizer step (ZeRO keeps gradients partitioned; a collective under ZeRO-3)."""
    from deepspeed.utils import safe_get_full_grad

    out = {}
    for name, p in module.named_parameters():
        g = safe_get_full_grad(p)
        if g is not None:
            out[name] = g.detach().float().cpu().numpy().copy()
    return out


def drain(named: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Run an iterator to its end (a rank that takes no part but must join the gathers)."""
    for _ in named:
        pass


def checksum(named: Iterable[tuple[str, torch.Tensor]]) -> float:
    return float(sum(t.double().sum().item() for _, t in named))


def save_hf(
    module: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: str, model_path: str
) -> None:
    """An HF folder (safetensors + config + tokenizer) loadable by from_pretrained."""
    from transformers import AutoTokenizer

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    module.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
    # The original config, not the training one (whose dropout the learner switched off).
    original = Path(model_path) / "config.json"
    if original.is_file():
        shutil.copyfile(original, out / "config.json")
    AutoTokenizer.from_pretrained(model_path).save_pretrained(out)
