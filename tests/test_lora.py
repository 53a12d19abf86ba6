"""LoRA end to end on the default engine: `rlhf train model.lora.rank=...` trains adapters on
the learner, the vLLM engines run the merged policy, and `final/` holds both forms.

The learner side (adapters' gradients equal under every ZeRO sharding and in plain PEFT, the
frozen base unmoved, the gathered export) is `tests/test_learner.py`'s `3-lora` case.
"""

from __future__ import annotations

import pytest
import torch

from tests.run_options import NO_DASHBOARD, ONE_EACH
from tests.test_real_shapes import records_of, strict_json, train

pytestmark = pytest.mark.slow


def test_a_lora_run_on_vllm_samples_from_the_policy_it_trains(tmp_path):
    """Three iterations of GRPO with a KL term, whose reference log-probs come from the
    learner's own base (adapters off; no reference pool starts): after every sync the
    engine's log-probs of its samples equal the learner's, which the merged weights must
    give; `final/` is the merged policy (plain transformers) and the adapter (PEFT on the
    base), the same function."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlhf.config import load_config
    from rlhf.models.default_model import prepare_model

    proc = train(tmp_path, "model.lora.rank=4", "learner.lr=1e-3", "algorithm.beta=0.05",
                 "run.iterations=3", "rollout.prompts_per_iteration=16", "run.eval_prompts=64",
                 *ONE_EACH, NO_DASHBOARD)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "runs" / "run"
    records = records_of(run)
    assert [r["policy_version"] for r in records] == [0, 1, 2]
    for r in records:
        # float32 sums in another order (merged W + s*B@A against the adapters applied
        # apart): ~1e-6 of a log-prob; a stale or unmerged policy is off by far more
        assert r["sync/logprob_abs_diff"] < 1e-5, r
    assert all("workers/reference" not in r for r in records)  # no reference pool
    assert all(r["time/reference"] > 0 for r in records)  # the learner served them
    # the reference is the starting policy: no KL before the first update
    assert records[0]["kl"] == pytest.approx(0, abs=1e-5)
    assert records[-1]["kl"] > 1e-4  # the policy moved away from the base
    strict_json(run / "summary.json")

    final = run / "final"
    merged = AutoModelForCausalLM.from_pretrained(final).eval()
    start = prepare_model(load_config(run / "config.yaml"))
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(start), final / "adapter"
    )
    adapted.eval()
    ids = torch.tensor([[5, 17, 9, 30, 11, 8, 2, 40]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        a = merged(input_ids=ids, attention_mask=mask).logits
        b = adapted(input_ids=ids, attention_mask=mask).logits
        with adapted.disable_adapter():
            c = adapted(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert (a - c).abs().max() > 1e-3, "final/ holds the starting policy"
