"""The critic's model: initialised from a policy folder or a reward-model folder, and its
values aligned like log-probs (position t holds V of the state before token t)."""

from __future__ import annotations

import torch

from rlhf.models.value_model import load_value_model
from tests.rows import tiny_model


def test_values_from_a_policy_start_at_zero_and_align_with_logprobs(tmp_path):
    path = tiny_model(tmp_path / "policy", 32, 2, 1, 64)
    model = load_value_model(path)
    ids = torch.tensor([[5, 6, 7, 8], [5, 9, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert not model(ids, mask).any()  # a fresh head: V = 0 everywhere
    with torch.no_grad():
        model.value_head.weight.normal_()
        model.value_head.bias.fill_(0.5)
        values = model(ids, mask)
        hidden = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    want = hidden[:, :-1] @ model.value_head.weight[0] + 0.5  # V(state before t) at t
    assert values.shape == ids.shape
    assert (values[:, 0] == 0).all()
    torch.testing.assert_close(values[:, 1:], want, atol=1e-5, rtol=1e-5)


def test_a_reward_model_folder_gives_its_backbone_and_score_head(tmp_path):
    from transformers import AutoModelForSequenceClassification

    path = tiny_model(tmp_path / "policy", 32, 2, 1, 64)
    rm = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    with torch.no_grad():
        rm.score.weight.normal_()
        for p in rm.model.parameters():
            p.add_(0.01)  # a backbone that differs from the policy's
    rm.save_pretrained(tmp_path / "rm")
    model = load_value_model(tmp_path / "rm")
    torch.testing.assert_close(model.value_head.weight, rm.score.weight)
    for (name, p), q in zip(model.backbone.named_parameters(), rm.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)
