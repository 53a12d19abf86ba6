"""Sampling the geometric mixture pi_mix ∝ pi_theta^(1-b) · pi_ref^b inside vLLM (IPO-MD, Nash-MD).

vLLM runs one model per engine, so the mixture is one model to it: a wrapper holding the policy
and the reference as two inner models (prefixes `policy` and `ref`). Every attention layer gets
its own KV cache keyed by its prefix, so both models keep a KV cache, under one block table.
`forward` runs both and returns their hidden states side by side; `compute_logits` returns
(1-b)·l_pol + b·l_ref, whose softmax (after temperature) is the normalised
pi_theta^(1-b) · pi_ref^b. vLLM then samples, and reports log-probs, from those mixed logits.

The wrapper is selected with `hf_overrides` (so the policy folder's config.json stays loadable
by transformers); the reference folder and the initial b travel in extra keys there. The
inner models are built through vLLM's registry from each folder's own config, so any
architecture vLLM supports works, not only Llama.

Heavy imports (vllm) happen inside functions: the oracle at the end needs only torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

MIXTURE_ARCH = "RlhfGeometricMixtureForCausalLM"
REFERENCE_KEY = "rlhf_mixture_reference"  # hf_overrides key: the reference model folder
COEF_KEY = "rlhf_mixture_coef"  # hf_overrides key: b at startup
POLICY_PREFIX = "policy"
REFERENCE_PREFIX = "ref"
PARTS = {"policy": POLICY_PREFIX, "reference": REFERENCE_PREFIX}


def check_mixture_coef(coef: float) -> float:
    """b as a float in [0, 1]; anything else is a caller's mistake, not something to clip."""
    b = float(coef)
    if not (0.0 <= b <= 1.0):  # also rejects NaN
        raise ValueError(f"mixture_coef must be in [0, 1], got {coef!r}")
    return b


def mixture_overrides(reference_path: str | Path, coef: float = 0.0) -> dict[str, Any]:
    """The `hf_overrides` that turn `LLM(model=<policy folder>)` into a mixture engine."""
    path = Path(reference_path).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise ValueError(
            f"mixture_reference {str(path)!r} is not a Hugging Face model folder (no config.json)"
        )
    return {
        "architectures": [MIXTURE_ARCH],
        REFERENCE_KEY: str(path),
        COEF_KEY: check_mixture_coef(coef),
    }


def register_mixture_model() -> None:
    """Make MIXTURE_ARCH known to vLLM's registry in this process.

    Needed in the driver (the model config checks the architecture) and in the worker process
    that builds the model; the worker gets it by importing `rlhf.engines.vllm_extension`
    (the engine's `worker_extension_cls`), which vLLM imports before loading the model.
    """
    from vllm import ModelRegistry

    if MIXTURE_ARCH not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(MIXTURE_ARCH, GeometricMixtureForCausalLM)


def _inner_hf_config(path: str, model_config: Any, revision: str | None = None) -> Any:
    # vLLM's own config loader (not transformers'), so each inner model sees exactly what a
    # plain engine on that folder would see (rope patching, architecture defaults).
    from vllm.transformers_utils.config import get_config

    return get_config(path, trust_remote_code=model_config.trust_remote_code, revision=revision)


class GeometricMixtureForCausalLM(nn.Module):
    """Two causal LMs in one vLLM model; logits (1-b)·policy + b·reference.

    `mixture_coef` (b) is engine-wide and read at every `compute_logits`, so it can change
    between generate calls (set it through `set_mixture_coef`, e.g. by collective_rpc).
    """

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__()
        from vllm.compilation.backends import set_model_tag
        from vllm.model_executor.model_loader.default_loader import DefaultModelLoader
        from vllm.model_executor.model_loader.utils import initialize_model
        from vllm.model_executor.models.utils import maybe_prefix

        model_config = vllm_config.model_config
        outer = model_config.hf_config
        reference_path = getattr(outer, REFERENCE_KEY, None)
        if not reference_path:
            raise ValueError(f"{MIXTURE_ARCH} needs hf_overrides[{REFERENCE_KEY!r}]")
        self.mixture_coef = check_mixture_coef(getattr(outer, COEF_KEY, 0.0))

        policy_cfg = _inner_hf_config(
            model_config.hf_config_path or model_config.model, model_config, model_config.revision
        )
        reference_cfg = _inner_hf_config(reference_path, model_config)
        vocab = [c.get_text_config().vocab_size for c in (policy_cfg, reference_cfg)]
        if vocab[0] != vocab[1]:
            raise ValueError(
                f"policy and reference vocabularies differ ({vocab[0]} vs {vocab[1]}): "
                "their logits cannot be mixed"
            )
        # Each inner model gets a config of its own (architecture, sizes) but shares the
        # engine's cache and compilation config, so both register their attention layers
        # (and so get KV caches) in the same engine.
        self.policy_vllm_config = vllm_config.with_hf_config(policy_cfg)
        reference_vllm_config = vllm_config.with_hf_config(reference_cfg)
        # A distinct compile tag per inner model: torch.compile caches are keyed by it, and the
        # two models may share a class (untested: CPU runs here are eager).
        with set_model_tag("mixture_policy"):
            self.policy = initialize_model(
                self.policy_vllm_config, prefix=maybe_prefix(prefix, POLICY_PREFIX)
            )
        with set_model_tag("mixture_reference"):
            self.ref = initialize_model(
                reference_vllm_config, prefix=maybe_prefix(prefix, REFERENCE_PREFIX)
            )
        self.policy_width = policy_cfg.get_text_config().hidden_size
        # The loader reads the policy folder (primary weights, unprefixed) and then this
        # source, with names prefixed "ref." (see load_weights).
        self.secondary_weights = [
            DefaultModelLoader.Source(reference_path, None, prefix=f"{REFERENCE_PREFIX}.")
        ]

    def set_mixture_coef(self, coef: float) -> None:
        self.mixture_coef = check_mixture_coef(coef)

    def part(self, name: str) -> nn.Module:
        """The "policy" or the "reference" inner model."""
        if name not in PARTS:
            raise ValueError(f"part must be one of {sorted(PARTS)}, got {name!r}")
        return getattr(self, PARTS[name])

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Part of vLLM's model interface; only used when the runner embeds inputs itself
        # (prompt embeddings, multimodal), which forward rejects.
        return self.policy.embed_input_ids(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if inputs_embeds is not None or intermediate_tensors is not None:
            # The reference needs its own embeddings of the tokens, and pipeline stages
            # would need both models' intermediate tensors.
            raise NotImplementedError(
                "the mixture model supports token-id inputs on one pipeline stage only"
            )
        # Both forwards always run, whatever b: they write both KV caches, and a prefix
        # cached while the reference was skipped would lack its keys and values.
        h_pol = self.policy(input_ids=input_ids, positions=positions, **kwargs)
        h_ref = self.ref(input_ids=input_ids, positions=positions, **kwargs)
        if h_pol.shape[-1] != self.policy_width:
            raise RuntimeError(f"policy hidden size {h_pol.shape[-1]} != {self.policy_width}")
        # The runner only selects rows of what forward returns, so side by side is safe.
        return torch.cat([h_pol, h_ref], dim=-1)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        b = self.mixture_coef
        w = self.policy_width
        # Skip a head whose weight is 0: exact, and its logits never touch a KV cache.
        l_pol = (
            None if b == 1.0 else self.policy.compute_logits(hidden_states[..., :w].contiguous())
        )
        l_ref = None if b == 0.0 else self.ref.compute_logits(hidden_states[..., w:].contiguous())
        if l_ref is None:
            return l_pol
        if l_pol is None:
            return l_ref
        return mix_logits(l_pol, l_ref, b)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Checkpoint names: the policy's unprefixed, the reference's under "ref."."""
        from vllm.model_executor.models.utils import AutoWeightsLoader

        ref = f"{REFERENCE_PREFIX}."
        routed = (
            (name if name.startswith(ref) else f"{POLICY_PREFIX}.{name}", tensor)
            for name, tensor in weights
        )
        # Routes each name to the inner model's own load_weights (q/k/v fusing, renames).
        return AutoWeightsLoader(self).load_weights(routed)


def mix_logits(policy_logits: torch.Tensor, reference_logits: torch.Tensor, coef: float):
    """(1-b)·l_pol + b·l_ref: log pi_theta^(1-b) · pi_ref^b up to a constant per row."""
    return (1.0 - coef) * policy_logits + coef * reference_logits


# ---------------------------------------------------------------------------- test oracle
@torch.inference_mode()
def hf_mixture_logits(
    policy: nn.Module, reference: nn.Module, token_ids: list[int], coef: float
) -> torch.Tensor:
    """[len(token_ids), vocab]: row i = mixed next-token logits after token_ids[: i + 1].

    Plain transformers forwards over the whole sequence (no KV cache), with `policy` and
    `reference` Hugging Face causal LMs: an independent check of the engine.
    """
    ids = torch.tensor([token_ids])
    l_pol = policy(ids).logits[0].float()
    l_ref = reference(ids).logits[0].float()
    return mix_logits(l_pol, l_ref, check_mixture_coef(coef))


def hf_mixture_probs(
    policy: nn.Module,
    reference: nn.Module,
    token_ids: list[int],
    coef: float,
    temperature: float = 1.0,
) -> torch.Tensor:
    """softmax(((1-b)·l_pol + b·l_ref) / T), row i = next-token distribution after
    token_ids[: i + 1]: the distribution a mixture engine samples from (top_p=1, top_k=0)."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    logits = hf_mixture_logits(policy, reference, token_ids, coef)
    return torch.softmax(logits / temperature, dim=-1)
