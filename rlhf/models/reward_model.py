"""A scalar reward model: a Hugging Face sequence-classification model with one label,
scoring `prompt + completion` at its last real token.

Shared by the trainer (`rlhf train-rm`) and the scorer on the reward workers, so both see
the same token sequence and read the same position:
- tokens: the prompt encoded as the controller encodes it for the policy, then the
  completion without special tokens (the ids the policy produced, as far as text allows; no
  EOS is added: appending one did not help on the built-in task, measured);
- rows are right-padded, positions count real tokens only, and the score is read at the last
  real token found from the attention mask (never by searching for pad ids, which a real
  token may share, e.g. when pad = EOS).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from rlhf.configbase import ConfigError
from rlhf.models.logprobs import pad_id_of, pad_rows, position_ids_of


class RewardModelError(ConfigError):
    """A folder that is not a usable one-label sequence-classification model (the message
    names the config field that points at it)."""


class ScalarReward(nn.Module):
    """Wraps the HF classifier so DeepSpeed (and the scorer) call one forward:
    (ids, mask) -> [B] scores at each row's last real token."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        if not isinstance(getattr(classifier, "score", None), nn.Linear):
            raise RewardModelError(
                f"{type(classifier).__name__} has no 'score' head: not a decoder "
                "sequence-classification model"
            )
        self.classifier = classifier

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.classifier.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_of(attention_mask),
            use_cache=False,
        ).last_hidden_state
        last = attention_mask.sum(-1) - 1  # right padding: the last real token
        picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.classifier.score(picked.to(self.classifier.score.weight.dtype)).squeeze(-1)

    def gradient_checkpointing_enable(self) -> None:
        self.classifier.gradient_checkpointing_enable()


def encode(
    tokenizer, prompts: Sequence[str], completions: Sequence[str], max_length: int
) -> list[list[int]]:
    """Token ids of each prompt + completion; longer rows keep their last `max_length`
    tokens (the end is where the score is read)."""
    p_ids = tokenizer(list(prompts)).input_ids
    c_ids = tokenizer(list(completions), add_special_tokens=False).input_ids
    rows = [p + c for p, c in zip(p_ids, c_ids, strict=True)]
    return [r[-max_length:] if r else [pad_id_of(tokenizer)] for r in rows]


@torch.no_grad()
def score_rows(
    model: ScalarReward, rows: list[list[int]], pad: int, batch_size: int
) -> list[float]:
    """Scores of token rows, `batch_size` rows per forward (right-padded)."""
    out: list[float] = []
    for start in range(0, len(rows), batch_size):
        ids, mask = pad_rows(rows[start : start + batch_size], pad)
        out.extend(model(ids, mask).float().tolist())
    return out


def check_folder(path: str | Path, field: str) -> Path:
    """A readable folder whose config is a one-label sequence classifier; errors name `field`
    (cheap: reads config.json only, so the driver can check before starting workers)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise RewardModelError(f"{field}: {str(folder)!r} does not exist or is not a folder")
    config = folder / "config.json"
    if not config.is_file():
        raise RewardModelError(
            f"{field}: {str(folder)!r} is not a Hugging Face model folder (no config.json)"
        )
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError) as err:
        raise RewardModelError(f"{field}: cannot read {str(config)!r}: {err}") from err
    labels = len(data.get("id2label") or {}) or data.get("num_labels", 2)
    archs = data.get("architectures") or []
    if labels != 1 or not any(a.endswith("ForSequenceClassification") for a in archs):
        raise RewardModelError(
            f"{field}: {str(folder)!r} is not a one-label sequence-classification model "
            f"(architectures {archs}, {labels} labels); `rlhf train-rm` makes one"
        )
    return folder


def load_reward_model(path: str | Path, field: str) -> tuple[ScalarReward, object]:
    """(model in eval mode without gradients, tokenizer) from a reward-model folder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = check_folder(path, field)
    try:
        classifier = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as err:  # transformers raises many kinds; the user needs the field
        raise RewardModelError(f"{field}: cannot load {str(folder)!r}: {err}") from err
    model = ScalarReward(classifier).eval()
    model.requires_grad_(False)
    return model, tokenizer


def init_from_folder(path: str | Path, pad_id: int) -> ScalarReward:
    """A trainable reward model from a policy folder (its backbone, a fresh one-label score
    head) or from a reward-model folder (its backbone and head)."""
    from transformers import AutoModelForSequenceClassification

    classifier = AutoModelForSequenceClassification.from_pretrained(
        str(path), num_labels=1, dtype=torch.float32
    )
    # HF's own forward (users loading the folder) finds the last token by the pad id.
    classifier.config.pad_token_id = pad_id
    model = ScalarReward(classifier)
    model.train()
    return model
