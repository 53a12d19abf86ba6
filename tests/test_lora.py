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
    learner's own base (adapters off; no reference pool starts). Each sync sends only the
    adapter, which vLLM applies to its base; after every sync the engine's log-probs of its
    samples equal the learner's. `final/` is the merged policy (plain transformers) and the
    adapter (PEFT on the base), the same function."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlhf.config import load_config
    from rlhf.models.default_model import prepare_model

    proc = train(tmp_path, "model.lora.rank=4", "sync.lora=adapter", "algorithm.beta=0.05",
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
    # every sync carried the adapter alone
    from safetensors.torch import load_file

    adapter_bytes = sum(
        t.numel() * 4 for t in load_file(final / "adapter" / "adapter_model.safetensors").values()
    )
    assert all(r["sync/bytes"] == adapter_bytes for r in records), adapter_bytes
    assert (a - c).abs().max() > 1e-3, "final/ holds the starting policy"


# ---------------------------------------------------------------- the two sync modes
def lora_policy(model_path: str):
    """A PEFT LoRA model of the tiny base whose adapters moved: B drawn at random, large
    enough to change what the model says (B = 0 would be the base itself)."""
    from rlhf.config import LoraConfig
    from rlhf.models.loading import load_policy
    from rlhf.models.lora import apply_lora

    torch.manual_seed(0)
    model = apply_lora(load_policy(model_path, False), LoraConfig(rank=4, alpha=16))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def _send(model_path: str, port: int, mode: str, q) -> None:
    """The learner's side of a two-member sync group: version 1 of the LoRA policy, as the
    adapter alone or merged (what `LearnerWorker.broadcast_weights` sends in each mode)."""
    from rlhf.models import lora
    from rlhf.sync import WeightSyncGroup, manifest_of
    from rlhf.training.export import full_parameters
    from tests.engine_checks import BUCKET

    try:
        model = lora_policy(model_path)
        named = full_parameters(model, "cpu")
        send = (
            lora.adapter_parameters(named)
            if mode == "adapter"
            else lora.merged_parameters(model, named)
        )
        state = dict(send)
        group = WeightSyncGroup("127.0.0.1", port, 0, 2, "gloo", 120.0, ["learner-0", "engine"])
        group.send(state.items(), manifest_of(state.items()), BUCKET, 1)
        group.close()
        q.put(("sent", sorted(state)))
    except Exception as err:  # surface the reason in the test's failure
        q.put(("error", repr(err)))


def _generate_after_sync(model_path: str, mode: str):
    from rlhf.config import LoraConfig
    from rlhf.engines.vllm_engine import VLLMEngine
    from rlhf.models import lora
    from rlhf.sync import manifest_of
    from rlhf.training.export import full_parameters
    from tests.engine_checks import BUCKET, NEW_TOKENS, PROMPTS, sender_process

    lora_rank = 4 if mode == "adapter" else 0
    engine = VLLMEngine(
        model_path, seed=0, max_model_len=256, kv_cache_bytes=64 * 2**20, lora_rank=lora_rank
    )
    try:
        with sender_process(_send, model_path, mode) as (endpoint, q):
            engine.init_weight_sync(endpoint)
            model = lora_policy(model_path)  # the sender's, to know what it sends
            if mode == "adapter":
                state = dict(lora.adapter_parameters(full_parameters(model, "cpu")))
                config = lora.adapter_config_of(LoraConfig(rank=4, alpha=16), sorted(state))
                engine.receive_adapter(manifest_of(state.items()), BUCKET, 1, config)
            else:
                state = dict(lora.merged_parameters(model, full_parameters(model, "cpu")))
                engine.receive_weights(manifest_of(state.items()), BUCKET, 1)
            kind, detail = q.get(timeout=60)
            assert kind == "sent", detail
            engine.close_weight_sync()
        kwargs = dict(max_new_tokens=NEW_TOKENS)
        greedy = engine.generate(PROMPTS, n=1, temperature=0.0, **kwargs)
        sampled = engine.generate(PROMPTS, n=4, temperature=1.0, seed=7, **kwargs)
        base = None
        if mode == "adapter":  # the base is still there, untouched, under the adapter
            engine._adapter, kept = None, engine._adapter
            base = engine.generate(PROMPTS, n=1, temperature=0.0, **kwargs).completion_ids
            engine._adapter = kept
        return greedy, sampled, base, len(sorted(state))
    finally:
        engine.shutdown()


def test_adapter_sync_equals_merged_sync(tmp_path):
    """One LoRA policy synced to a vLLM engine both ways: only its adapter (vLLM applies it
    to the base it loaded) or its merged weights. The same greedy answers and, with the same
    seed, the same samples with log-probs equal to float32 rounding (the two compute
    x W + s (x A) B and x (W + s B A): ~1e-6 apart)."""
    from rlhf.models.tiny import build_tiny_model
    from tests.engine_checks import corpus

    model_path = str(build_tiny_model(tmp_path / "tiny", corpus()))
    a_greedy, a_sampled, base, a_tensors = _generate_after_sync(model_path, "adapter")
    m_greedy, m_sampled, _, m_tensors = _generate_after_sync(model_path, "merged")
    assert a_tensors == 2 * 7 * 4 and m_tensors > 7 * 4  # A and B of 7 layers x 4 blocks
    assert a_greedy.completion_ids == m_greedy.completion_ids
    assert base != a_greedy.completion_ids  # the adapter changes what the model says
    assert a_sampled.completion_ids == m_sampled.completion_ids
    for a, m in zip(a_sampled.logprobs, m_sampled.logprobs, strict=True):
        assert a == pytest.approx(m, abs=1e-5)


def test_an_adapter_folder_merges_onto_the_base_it_names(tmp_path):
    """`rlhf eval --policy final/adapter`: the adapter folder alone (PEFT's layout, as a run
    writes it) becomes the merged model on the base its config names, the same function as
    the LoRA model it was saved from; a base that is not there is named."""
    import json

    from transformers import AutoModelForCausalLM

    from rlhf.models import lora
    from rlhf.models.tiny import build_tiny_model
    from rlhf.training.export import full_parameters
    from tests.engine_checks import corpus

    base = str(build_tiny_model(tmp_path / "tiny", corpus(), hidden_size=64, num_heads=2))
    model = lora_policy(base)
    adapter = tmp_path / "final" / "adapter"
    lora.save_adapter(model, lora.adapter_state(full_parameters(model, "cpu")), str(adapter))
    assert lora.is_adapter_folder(str(adapter)) and not lora.is_adapter_folder(base)
    merged = AutoModelForCausalLM.from_pretrained(
        lora.merge_adapter_folder(str(adapter), str(tmp_path / "merged"))
    ).eval()
    ids = torch.tensor([[5, 17, 9, 30, 11, 8, 2, 40]])
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        got = merged(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(
        json.dumps({**config, "base_model_name_or_path": str(tmp_path / "gone")})
    )
    with pytest.raises(ValueError, match="is not a folder here"):
        lora.merge_adapter_folder(str(adapter), str(tmp_path / "again"))
