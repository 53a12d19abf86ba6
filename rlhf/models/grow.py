"""Deepen a decoder without changing what it computes: new layers whose output projections
start at zero add nothing to the residual stream until training gives them a job.

Used where a model must check an answer against a sum its lower layers form at an earlier
position (the tiny LLM judge, reward models): the check needs layers after the sum.
"""

from __future__ import annotations

import torch


def add_identity_layers(model: torch.nn.Module, extra: int, seed: int) -> None:
    """Append `extra` Llama-style decoder layers to `model.model.layers` (a causal LM or a
    sequence classifier of that family), attention and MLP outputs zero-initialised."""
    backbone = getattr(model, "model", None)
    layers = getattr(backbone, "layers", None)
    if layers is None or len(layers) == 0:
        raise ValueError(f"{type(model).__name__} has no decoder layers at .model.layers")
    g = torch.Generator().manual_seed(seed)
    std = model.config.initializer_range
    for _ in range(extra):
        layer = type(layers[-1])(model.config, layer_idx=len(layers))
        for name, param in layer.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                torch.nn.init.zeros_(param)
            elif param.dim() == 2:
                param.data.copy_(torch.randn(param.shape, generator=g) * std)
        layers.append(layer)
    model.config.num_hidden_layers = len(layers)
    if getattr(model.config, "layer_types", None) is not None:  # per-layer attention kinds
        model.config.layer_types = (
            list(model.config.layer_types) + [model.config.layer_types[-1]] * extra
        )
