"""The per-token log-prob convention, and the reference worker's use of it (no Ray needed)."""

import pytest
import torch

from rlhf.batch import TrainBatch
from rlhf.config import load_config
from rlhf.models.logprobs import model_token_logprobs, pad_rows, token_logprobs
from rlhf.models.tiny import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "m"
    build_tiny_model(
        path,
        ["1+2=3", "12+30=42", "hello there"] * 20,
        hidden_size=32,
        num_layers=1,
        intermediate_size=64,
    )
    return str(path)


def test_token_logprobs_by_hand():
    # vocabulary of 2; position 0 predicts token 1 with logits [0, log 3] -> p = 3/4
    logits = torch.tensor([[[0.0, torch.log(torch.tensor(3.0))], [0.0, 0.0]]])
    ids = torch.tensor([[0, 1]])
    lp = token_logprobs(logits, ids)
    assert lp[0, 0] == 0.0
    assert lp[0, 1].item() == pytest.approx(torch.log(torch.tensor(0.75)).item(), abs=1e-6)
    # temperature 2 halves the logits: p = sqrt(3) / (1 + sqrt(3))
    lp2 = token_logprobs(logits, ids, temperature=2.0)
    p = 3**0.5 / (1 + 3**0.5)
    assert lp2[0, 1].item() == pytest.approx(torch.log(torch.tensor(p)).item(), abs=1e-6)


def test_padding_does_not_change_logprobs(tiny):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    a, b = [5, 6, 7, 8, 9], [5, 6, 7]
    ids, mask = pad_rows([a, b], pad=0)
    with torch.no_grad():
        both = model_token_logprobs(model, ids, mask)
        alone = model_token_logprobs(model, torch.tensor([b]), torch.ones(1, 3, dtype=torch.long))
    torch.testing.assert_close(both[1, :3], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "limit",
    [
        # micro-batches of 2 rows: the 3 rows below take two, the second narrower
        "learner.micro_batch_size=2",
        # 8 token slots: rows of 5, 4 and 2 tokens go as [5] and [4, 2] (2 x 4 slots)
        "learner.max_tokens_per_micro_batch=8",
    ],
)
def test_reference_worker_returns_completion_logprobs(tiny, limit):
    from transformers import AutoModelForCausalLM

    from rlhf.workers.reference import ReferenceWorker

    cfg = load_config(None, [limit, "rollout.samples_per_prompt=2"])
    worker = ReferenceWorker(cfg, 0, tiny)
    rows = [[5, 6, 10, 11, 2], [7, 8, 9, 12], [5, 7]]
    ids, mask = pad_rows(rows, pad=0)
    batch = TrainBatch({"input_ids": ids.numpy(), "attention_mask": mask.numpy()}, [0, 0, 1])
    got = worker.logprobs(batch)
    assert got.shape == (3, 5)
    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    for i, row in enumerate(rows):
        with torch.no_grad():
            alone = model_token_logprobs(
                model, torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long)
            )
        torch.testing.assert_close(
            torch.from_numpy(got[i, : len(row)]), alone[0], atol=1e-5, rtol=1e-5
        )
        assert not got[i, len(row) :].any()  # padding holds no log-probs


def test_logits_of_the_completions_tail_give_the_same_completion_logprobs(tiny):
    """The learner runs the output layer only from the position before the earliest
    completion token (`completion_tail`): the completion tokens' log-probs are those of the
    full forward (one matmul on fewer rows: float32 rounding apart)."""
    from transformers import AutoModelForCausalLM

    from rlhf.models.logprobs import completion_tail, left_pad, model_logits

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    ids, mask = pad_rows([[5, 6, 7, 8, 9, 10, 11], [5, 6, 7, 8, 9], [5, 6, 7, 8, 9, 10]], pad=0)
    completion = torch.zeros_like(mask, dtype=torch.float32)
    completion[0, 5:7], completion[1, 4:5], completion[2, 3:6] = 1, 1, 1  # earliest: 3
    keep = completion_tail(completion)
    assert keep == 7 - 2  # positions 2..6: position 2 predicts token 3
    with torch.no_grad():
        tail = model_logits(model, ids, mask, keep)
        assert tail.shape[1] == keep
        got = left_pad(token_logprobs(tail, ids[:, 7 - keep :]), 7)
        want = model_token_logprobs(model, ids, mask)
    torch.testing.assert_close(got * completion, want * completion, atol=1e-5, rtol=0)
    assert (got[:, :3] == 0).all()  # no prediction is made for the prompts
    assert completion_tail(torch.zeros(2, 4)) == 1  # a filler micro-batch
