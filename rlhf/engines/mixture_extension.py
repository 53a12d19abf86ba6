"""The worker extension of a mixture engine: weight sync into the policy half only.

Importing this module registers the mixture model class, which is how the worker process
(where vLLM imports `worker_extension_cls` before it loads the model) learns of it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from rlhf.engines.mixture import GeometricMixtureForCausalLM, register_mixture_model
from rlhf.engines.vllm_extension import (
    WeightSyncExtension,
    module_digest,
    param_checksum,
    repack_tied_weights,
)

register_mixture_model()


class MixtureWeightSyncExtension(WeightSyncExtension):
    """`WeightSyncExtension` for `GeometricMixtureForCausalLM`: the learner sends HF-named
    policy tensors (the same manifest as for a plain engine); they reload the policy half,
    and the reference half is never touched."""

    def _rlhf_mixture(self) -> GeometricMixtureForCausalLM:
        model = self.model_runner.get_model()
        if not isinstance(model, GeometricMixtureForCausalLM):
            raise RuntimeError(f"not a mixture model: {type(model).__name__}")
        return model

    def _rlhf_part(self, part: str | None) -> torch.nn.Module:
        model = self._rlhf_mixture()
        return model if part is None else model.part(part)

    def rlhf_set_mixture_coef(self, coef: float) -> float:
        model = self._rlhf_mixture()
        model.set_mixture_coef(coef)
        return model.mixture_coef

    def rlhf_load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        # vLLM's layer-wise reload rooted at the policy sub-model: it loads the policy's
        # checkpoint names as they come and re-runs its post-load processing (CPU repacking).
        # Rooted at the whole wrapper, every reference layer would count as "not loaded",
        # be restored from its saved tensors and log "Failed to load weights" per layer.
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload.inplace import reload_weights

        model = self._rlhf_mixture()
        with set_current_vllm_config(self.vllm_config):
            reload_weights(
                model.policy_vllm_config,
                model.policy,
                weights_iterator=weights,
                weights_path=None,
                is_checkpoint_format=True,
            )
        if self.device.type == "cpu":
            repack_tied_weights(model.policy)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def rlhf_param_checksum(self, part: str | None = None) -> float:
        return param_checksum(self._rlhf_part(part))

    def rlhf_param_digest(self, part: str | None = None) -> str:
        return module_digest(self._rlhf_part(part))
