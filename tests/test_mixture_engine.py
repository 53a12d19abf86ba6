"""The mixture engine: vLLM sampling pi_mix ∝ pi_theta^(1-b) · pi_ref^b, checked with transformers.

Two different tiny models (seeds 0 and 1, output layers sharpened so the distributions are far
from uniform and from each other) play the policy and the reference. The engine's full
next-token distributions at decode positions must equal the mixture computed with plain
transformers, within a tolerance derived from float32 rounding; thousands of samples must be
within multinomial noise of it; a weight sync sent by another process over a real gloo group
must change the policy half only. Every check is shown able to fail: the policy alone, the
reference alone, a b off by 0.05 and the weights before a sync all fall outside.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest
import torch

from rlhf.engines.mixture import hf_mixture_probs
from rlhf.sync import manifest_of
from tests.engine_checks import sender_process

pytestmark = pytest.mark.slow

# The long prompt fills a whole KV block (128 tokens on CPU), so vLLM caches its prefix (for
# both models): a block cached without the reference's keys/values, or left stale by a sync,
# would show in the distributions.
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [3 + i % 40 for i in range(140)]]
NEW_TOKENS = 6  # decode positions checked per prompt
CASES = [(0.5, 1.0), (0.5, 0.7), (0.0, 1.0), (1.0, 1.0)]  # (b, temperature)
SHARPEN = 10.0  # output-layer scale: distributions far from uniform (top-1 p ~ 0.1 - 0.8)
BUCKET = 64 * 1024  # several buckets for a ~1M-param model

# Tolerance, derived from float32 rounding (no constant fitted to a machine).
# vLLM (oneDNN GEMMs, its CPU attention kernel) and transformers (ATen) compute the same
# function in float32 with different summation orders, so their logits differ by rounding
# only. With unit roundoff u = 2^-24, a float32 reduction of n terms errs by at most
# LAMBDA·sqrt(n)·u times the sum of the terms' magnitudes, with probability >= 1 - 2n·e^(-LAMBDA²/2)
# (Higham & Mary 2019, probabilistic rounding error analysis; LAMBDA = 8: ~1e-11 for n = 512).
# A logit sits at the end of a chain of K reductions (per Llama layer: input norm, q/k/v, q·k,
# softmax sum, p·v, o, post-attention norm, gate/up, down = 9; then final norm and lm_head),
# each of at most n = max(hidden, intermediate, sequence length) terms; we let the relative
# errors of the chain add up (no cancellation), for each of the two implementations:
#     |logit_vllm - logit_hf| <= delta = 2·K·LAMBDA·sqrt(n)·u · max_i sum_j |W_ij·h_j|,
# the last factor being the magnitude of the lm_head's terms (W the output layer, h its input),
# measured from the transformers model on the sequence checked. Mixed logits
# (1-b)·l_pol + b·l_ref inherit (1-b)·delta_pol + b·delta_ref. A logit error of at most delta
# moves every softmax(z/T) probability by a factor within exp(±2·delta/T), so
#     |p_vllm_i - p_hf_i| <= p_hf_i · (exp(2·delta/T + 8u) - 1)
# (8u for the rounding of softmax and exp themselves). The bound is loose (a few percent of p
# here, where the measured differences are ~1e-6 of p) but holds on any x86 CPU, and it still
# separates the mixture from a b off by 0.05.
U = 2.0**-24
LAMBDA = 8.0
ALPHA = 1e-6  # false-alarm rate of the sampling test


def _corpus() -> list[str]:
    r = random.Random(0)
    return [
        f"{a}+{b}={a + b}" for a, b in ((r.randrange(100), r.randrange(100)) for _ in range(500))
    ]


def _build(path, seed: int) -> str:
    from transformers import AutoModelForCausalLM

    from rlhf.models.tiny import build_tiny_model

    build_tiny_model(path, _corpus(), seed=seed)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(SHARPEN)
    model.save_pretrained(path, safe_serialization=True)
    return str(path)


def _perturbed(model_path: str, version: int) -> dict[str, torch.Tensor]:
    """The learner's policy weights for `version` (>= 1): the same in every process."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    g = torch.Generator().manual_seed(1000 + version)
    return {n: t + 0.02 * torch.randn(t.shape, generator=g) for n, t in model.state_dict().items()}


def _learner_state(paths: tuple[str, str], version: int, source: str) -> dict[str, torch.Tensor]:
    """What the learner sends: the perturbed policy, or ("reference") the reference's weights."""
    policy_path, reference_path = paths
    if source == "reference":
        return dict(_hf(reference_path).state_dict())
    return _perturbed(policy_path, version)


def _sender(paths: tuple[str, str], port: int, plan: list[tuple[int, str]], q) -> None:
    from rlhf.sync import WeightSyncGroup

    try:
        group = WeightSyncGroup("127.0.0.1", port, 0, 2, "gloo", 120.0, ["learner-0", "engine"])
        for v, source in plan:
            state = _learner_state(paths, v, source)
            stats = group.send(state.items(), manifest_of(state.items()), BUCKET, v)
            q.put(("sent", v, stats["buckets"]))
        group.close()
    except Exception as err:  # surface the reason in the test's failure
        q.put(("error", -1, repr(err)))


def _hf(model_path: str, state: dict[str, torch.Tensor] | None = None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    if state is not None:
        model.load_state_dict(state)
    return model


def logit_error_bound(model, token_ids: list[int]) -> float:
    """delta above: a bound on |vLLM logit - transformers logit| for `model` on `token_ids`."""
    head = model.get_output_embeddings()
    seen: dict[str, torch.Tensor] = {}
    hook = head.register_forward_hook(lambda _m, args, _out: seen.setdefault("h", args[0]))
    try:
        with torch.inference_mode():
            model(torch.tensor([token_ids]))
    finally:
        hook.remove()
    magnitude = (seen["h"][0].abs() @ head.weight.abs().T).max().item()
    cfg = model.config
    chain = 9 * cfg.num_hidden_layers + 2
    n = max(cfg.hidden_size, cfg.intermediate_size, len(token_ids))
    return 2 * chain * LAMBDA * math.sqrt(n) * U * magnitude


def _relative_tolerance(policy, reference, token_ids: list[int], b: float, t: float) -> float:
    delta = (1 - b) * logit_error_bound(policy, token_ids) + b * logit_error_bound(
        reference, token_ids
    )
    return math.expm1(2 * delta / t + 8 * U)


@dataclass
class Setup:
    engine: object
    policy_path: str
    reference_path: str
    version: int = 0  # the policy version the engine holds (0: the folder's weights)
    _hf: dict = field(default_factory=dict)

    def policy(self):
        """The transformers twin of the engine's current policy."""
        if self.version not in self._hf:
            state = None if self.version == 0 else _perturbed(self.policy_path, self.version)
            self._hf[self.version] = _hf(self.policy_path, state)
        return self._hf[self.version]

    def reference(self):
        if "ref" not in self._hf:
            self._hf["ref"] = _hf(self.reference_path)
        return self._hf["ref"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from rlhf.engines.vllm_engine import VLLMEngine

    policy_path = _build(tmp_path_factory.mktemp("policy"), seed=0)
    reference_path = _build(tmp_path_factory.mktemp("reference"), seed=1)
    engine = VLLMEngine(
        policy_path,
        seed=0,
        max_model_len=256,
        kv_cache_bytes=128 * 2**20,
        mixture_reference=reference_path,
        max_logprobs=-1,  # whole next-token distributions
    )
    yield Setup(engine, policy_path, reference_path)
    engine.shutdown()


def _engine_distributions(engine, b: float, t: float) -> list[tuple[list[int], torch.Tensor]]:
    """Per prompt: prompt + sampled completion, and the engine's full next-token distribution
    at each of its NEW_TOKENS decode positions ([NEW_TOKENS, vocab])."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    engine.set_mixture_coef(b)
    params = SamplingParams(
        max_tokens=NEW_TOKENS,
        temperature=t,
        logprobs=-1,
        ignore_eos=True,  # every prompt gets all NEW_TOKENS decode positions
        seed=17,
        detokenize=False,
    )
    prompts = [TokensPrompt(prompt_token_ids=p) for p in PROMPTS]
    result = []
    outputs = engine.llm.generate(prompts, params, use_tqdm=False)
    for prompt, request in zip(PROMPTS, outputs, strict=True):
        out = request.outputs[0]
        vocab = len(out.logprobs[0])
        probs = torch.full((len(out.logprobs), vocab), float("nan"))
        for i, step in enumerate(out.logprobs):
            for token, lp in step.items():
                probs[i, token] = math.exp(lp.logprob)
        assert not probs.isnan().any(), "the engine must report the whole vocabulary"
        result.append((prompt + list(out.token_ids), probs))
    return result


def _check_distributions(setup: Setup, b: float, t: float) -> dict[str, float]:
    """Engine vs transformers at every decode position; returns the largest difference, the
    largest allowed one, and the smallest violation ratio of the alternatives (must be > 1)."""
    policy, reference = setup.policy(), setup.reference()
    worst, allowed, alt_ratio = 0.0, 0.0, math.inf
    alternatives = sorted({0.0, 0.5, 1.0, min(b + 0.05, 1.0), max(b - 0.05, 0.0)} - {b})
    for seq, got in _engine_distributions(setup.engine, b, t):
        rows = slice(len(seq) - NEW_TOKENS - 1, len(seq) - 1)
        want = hf_mixture_probs(policy, reference, seq, b, t)[rows]
        tol = want * _relative_tolerance(policy, reference, seq, b, t)
        diff = (got - want).abs()
        assert (diff <= tol).all(), f"b={b} T={t}: {diff.max().item():.3g}"
        worst, allowed = max(worst, diff.max().item()), max(allowed, tol.max().item())
        for other in alternatives:
            # The check can fail: another b's distribution breaks the tolerance somewhere.
            alt = hf_mixture_probs(policy, reference, seq, other, t)[rows]
            ratio = ((alt - want).abs() / tol).max().item()
            assert ratio > 1, f"b={other} is indistinguishable from b={b}"
            alt_ratio = min(alt_ratio, ratio)
    return {"max_abs_diff": worst, "max_tol": allowed, "min_alternative_ratio": alt_ratio}


def test_next_token_distributions_match_transformers(setup):
    for b, t in CASES:
        stats = _check_distributions(setup, b, t)
        print(f"b={b} T={t}: {stats}")


def test_samples_follow_the_mixture(setup):
    b, t, n = 0.5, 1.0, 6000
    prompt = PROMPTS[1]
    out = setup.engine.generate(
        [prompt], n=n, max_new_tokens=1, temperature=t, seed=5, mixture_coef=b
    )
    tokens = torch.tensor([c[0] for c in out.completion_ids])
    assert len(tokens) == n
    policy, reference = setup.policy(), setup.reference()
    p_mix = hf_mixture_probs(policy, reference, prompt, b, t)[-1].double()
    empirical = torch.bincount(tokens, minlength=len(p_mix)).double() / n

    # An exact sampler's empirical distribution has E[TV] <= 1/2 · sum_i sqrt(p_i(1-p_i)/n)
    # (Jensen on each |p̂_i - p_i|), and TV moves by at most 1/n when one sample changes, so
    # P(TV > E[TV] + s) <= exp(-2 n s²) (McDiarmid): s below makes that ALPHA. The engine
    # samples its own distribution, within TV 1/2 · sum_i tol_i of p_mix (tolerance above).
    rel = _relative_tolerance(policy, reference, prompt, b, t)
    expected = 0.5 * torch.sqrt(p_mix * (1 - p_mix) / n).sum().item()
    spread = math.sqrt(math.log(1 / ALPHA) / (2 * n))
    bound = expected + spread + 0.5 * rel

    def tv(p: torch.Tensor) -> float:
        return 0.5 * (empirical - p).abs().sum().item()

    p_policy = hf_mixture_probs(policy, reference, prompt, 0.0, t)[-1].double()
    tv_mix, tv_policy = tv(p_mix), tv(p_policy)
    tv_reference = tv(hf_mixture_probs(policy, reference, prompt, 1.0, t)[-1].double())
    print(
        f"TV: mixture {tv_mix:.4f} (bound {bound:.4f}, E[TV] <= {expected:.4f}), "
        f"policy alone {tv_policy:.4f}, reference alone {tv_reference:.4f}"
    )
    assert tv_mix <= bound
    assert tv_policy > bound and tv_reference > bound  # the test can fail

    # The returned log-probs are the mixture's: log p_mix of each sampled token.
    logprobs = torch.tensor([lp[0] for lp in out.logprobs], dtype=torch.float64)
    want = p_mix.log()[tokens]
    assert (logprobs - want).abs().max().item() <= math.log1p(rel)
    assert (logprobs - p_policy.log()[tokens]).abs().max().item() > math.log1p(rel)


def test_weight_sync_reloads_only_the_policy(setup):
    engine = setup.engine
    cases = [(0.5, 1.0), (0.0, 1.0)]
    for b, t in cases:
        _check_distributions(setup, b, t)
    digests = {part: engine.param_digest(part) for part in ("policy", "reference")}
    sums = {part: engine.param_checksum(part) for part in ("policy", "reference")}
    assert digests["policy"] != digests["reference"]

    # Two perturbed policies; then the reference's own weights sent as the policy (the policy
    # digest must then equal the reference's: the digest sees the weights the kernels use,
    # not object identities); then a perturbed policy again, so later tests see two models.
    v = setup.version
    plan = [(v + 1, "policy"), (v + 2, "policy"), (v + 3, "reference"), (v + 4, "policy")]
    # The sync must change the distributions: the engine's, before it, is outside the
    # tolerance around the synced policy's mixture.
    after = Setup(engine, setup.policy_path, setup.reference_path, plan[0][0])
    for seq, got in _engine_distributions(engine, 0.5, 1.0):
        rows = slice(len(seq) - NEW_TOKENS - 1, len(seq) - 1)
        want = hf_mixture_probs(after.policy(), after.reference(), seq, 0.5, 1.0)[rows]
        tol = want * _relative_tolerance(after.policy(), after.reference(), seq, 0.5, 1.0)
        assert ((got - want).abs() > tol).any()

    manifest = manifest_of(_perturbed(setup.policy_path, 1).items())
    paths = (setup.policy_path, setup.reference_path)
    with sender_process(_sender, paths, plan) as (endpoint, q):
        engine.init_weight_sync(endpoint)
        for v, source in plan:
            engine.receive_weights(manifest, BUCKET, v)
            kind, version, buckets = q.get(timeout=60)
            assert (kind, version) == ("sent", v), buckets
            assert buckets > 1
            # The reference half is bit-identical; the policy half changed.
            assert engine.param_digest("reference") == digests["reference"]
            assert engine.param_checksum("reference") == sums["reference"]
            policy_digest, policy_sum = (
                engine.param_digest("policy"),
                engine.param_checksum("policy"),
            )
            assert policy_digest != digests["policy"] and policy_sum != sums["policy"]
            digests["policy"], sums["policy"] = policy_digest, policy_sum
            if source == "reference":
                assert policy_digest == digests["reference"]
                continue
            assert policy_digest != digests["reference"]
            setup.version = v
            for b, t in cases:
                stats = _check_distributions(setup, b, t)
                print(f"after sync v{v}, b={b} T={t}: {stats}")
        engine.close_weight_sync()


def test_bad_mixture_coef(setup):
    from rlhf.engines.mixture import mixture_overrides
    from rlhf.engines.vllm_engine import VLLMEngine

    engine = setup.engine
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="mixture_coef"):
            engine.generate([[5, 6]], n=1, max_new_tokens=1, temperature=1.0, mixture_coef=bad)
    with pytest.raises(ValueError, match="part"):
        engine.param_checksum("both")
    with pytest.raises(ValueError, match="mixture_coef"):
        engine.set_mixture_coef(2.0)
    # The worker checks b too (for a caller going around the engine), and keeps its b.
    engine.set_mixture_coef(0.25)
    with pytest.raises(Exception, match="mixture_coef"):
        engine.llm.collective_rpc("rlhf_set_mixture_coef", args=(2.0,))
    assert engine.llm.collective_rpc("rlhf_set_mixture_coef", args=(0.25,)) == [0.25]

    # A plain engine: the checks come before vLLM is touched, so no second engine is started.
    plain = object.__new__(VLLMEngine)
    plain.mixture_reference = None
    with pytest.raises(ValueError, match="mixture engine"):
        plain.generate([[5, 6]], n=1, max_new_tokens=1, temperature=1.0, mixture_coef=0.5)
    with pytest.raises(ValueError, match="mixture engine"):
        plain.param_checksum("policy")
    with pytest.raises(ValueError, match="config.json"):
        mixture_overrides(setup.policy_path + "/missing")
