"""A critic: a causal-LM backbone with a scalar value head, V(state) at every position.

Initialised from the policy's folder (its backbone; a fresh head) or from a reward model
saved as `AutoModelForSequenceClassification` (its backbone and, with one label, its score
head as the value head's start). Values are aligned like log-probs: `values[b, t]` is the
value of the state *before* token t (computed at position t-1); position 0 holds 0.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rlhf.models.loading import without_dropout
from rlhf.models.logprobs import position_ids_of


class ValueModel(nn.Module):
    def __init__(self, backbone: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.value_head = nn.Linear(hidden_size, 1)
        # V = 0 everywhere at the start: no made-up baseline before the critic has learned.
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_of(attention_mask),
            use_cache=False,
        ).last_hidden_state
        v = self.value_head(hidden[:, :-1].to(self.value_head.weight.dtype)).squeeze(-1)
        return nn.functional.pad(v.float(), (1, 0), value=0.0)

    def gradient_checkpointing_enable(self) -> None:
        self.backbone.gradient_checkpointing_enable()


def load_value_model(path: str | Path) -> ValueModel:
    """A ValueModel from a policy folder or a sequence-classification reward-model folder."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModel

    path = str(path)
    config = without_dropout(AutoConfig.from_pretrained(path))
    backbone = AutoModel.from_pretrained(path, config=config, dtype=torch.float32)
    model = ValueModel(backbone, config.hidden_size)
    weights = Path(path) / "model.safetensors"
    if weights.is_file():
        with safe_open(str(weights), "pt") as f:
            if "score.weight" in f.keys():
                score = f.get_tensor("score.weight")
                if score.shape[0] == 1:  # a scalar reward model's head: a sensible start
                    with torch.no_grad():
                        model.value_head.weight.copy_(score.float())
    model.train()
    return model
