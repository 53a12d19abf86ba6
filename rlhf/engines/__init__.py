"""Generation engines: vLLM (the default) and plain transformers (a fallback)."""

from __future__ import annotations

from rlhf.config import RolloutConfig
from rlhf.engines.base import GenerationEngine


def make_engine(
    rollout_cfg: RolloutConfig,
    model_path: str,
    seed: int,
    mixture_reference: str | None = None,
    sleep_mode: bool = False,
    dtype: str = "float32",
    max_model_len: int | None = None,
    lora_rank: int = 0,
) -> GenerationEngine:
    """The engine `rollout_cfg.engine` names; heavy imports happen only for the one chosen.
    `dtype`: the weights' and activations' dtype, resolved (`rlhf.models.dtypes.pool_dtype`).
    `mixture_reference`: a reference model folder; the engine then also samples the
    policy/reference geometric mixture (IPO-MD, Nash-MD; vLLM only). `sleep_mode`: a vLLM
    engine on GPU may free its memory between its turns (colocated pools). `max_model_len`:
    the context a run decided (`rlhf.data.lengths.fit_prompts`); None: `rollout_cfg`'s, or
    without one the model's positions. `lora_rank`: above 0, a vLLM engine that takes the
    policy as a LoRA adapter of that rank on its base (adapter-only weight syncs)."""
    if mixture_reference is not None and rollout_cfg.engine != "vllm":
        raise ValueError(
            "rollout.engine must be 'vllm' to sample the policy/reference mixture "
            f"(got {rollout_cfg.engine!r})"
        )
    if rollout_cfg.engine == "vllm":
        from rlhf.engines.vllm_engine import VLLMEngine

        return VLLMEngine(
            model_path,
            seed=seed,
            dtype=dtype,
            max_model_len=max_model_len or rollout_cfg.max_model_len,
            kv_cache_bytes=rollout_cfg.kv_cache_bytes,
            enforce_eager=rollout_cfg.enforce_eager,
            gpu_memory_utilization=rollout_cfg.gpu_memory_utilization,
            mixture_reference=mixture_reference,
            sleep_mode=sleep_mode,
            lora_rank=lora_rank,
        )
    if rollout_cfg.engine == "hf":
        from rlhf.engines.hf_engine import HFEngine

        return HFEngine(model_path, seed=seed, dtype=dtype)
    raise ValueError(f"rollout.engine must be 'vllm' or 'hf', got {rollout_cfg.engine!r}")


__all__ = ["GenerationEngine", "make_engine"]
