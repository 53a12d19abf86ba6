"""Methods mixed into vLLM's worker (`worker_extension_cls`), reached by `llm.collective_rpc`.

They run inside vLLM's worker process, next to the model: that process joins the weight-sync
group as a receiver and loads each bucket straight into the engine's parameters, so weights
never pass through the engine's API process or the Ray object store.

Arguments cross vLLM's RPC serialization, so they are plain lists and strings.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

from rlhf.sync.buckets import ParamSpec
from rlhf.sync.group import SyncEndpoint, WeightSyncGroup

LAYERWISE_RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"


def manifest_to_wire(manifest: list[ParamSpec]) -> list[list]:
    return [[s.name, list(s.shape), s.dtype] for s in manifest]


def manifest_from_wire(rows: list[list]) -> list[ParamSpec]:
    return [ParamSpec(name, tuple(shape), dtype) for name, shape, dtype in rows]


class WeightSyncExtension:
    """Mixed into vLLM's Worker: `self.model_runner`, `self.device` come from it."""

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
        if hasattr(runner, "reload_weights"):
            self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        else:
            runner.model.load_weights(weights=weights)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def rlhf_close_weight_sync(self) -> None:
        group = getattr(self, "_rlhf_sync", None)
        if group is not None:
            group.close()
        self._rlhf_sync = None

    def rlhf_param_checksum(self) -> float:
        """Sum of every parameter (a cheap probe for tests and debugging)."""
        model = self.model_runner.get_model()
        return float(sum(p.detach().double().sum().item() for p in model.parameters()))
