"""LearnerWorker: one data-parallel rank of the DeepSpeed policy trainer; rank 0 also sends
the weights to the rollout engines."""

from __future__ import annotations

import numpy as np
import torch

from rlhf.algorithms.base import ForwardOutput
from rlhf.models import lora
from rlhf.models.loading import load_policy
from rlhf.models.logprobs import (
    completion_tail,
    left_pad,
    model_logits,
    token_entropy,
    token_logprobs,
)
from rlhf.sync.buckets import ParamSpec
from rlhf.sync.group import SyncEndpoint, WeightSyncGroup, host_store
from rlhf.training import export
from rlhf.training.train_step import Tensors
from rlhf.workers.deepspeed_worker import DeepSpeedWorker


class LearnerWorker(DeepSpeedWorker):
    role = "learner"
    measures_sampler_gap = True
    sync: WeightSyncGroup | None = None
    sends_adapter = False  # `Config.sends_adapter`, resolved in init_training
    manifest: list[ParamSpec] = []

    def load_model(self) -> torch.nn.Module:
        model = load_policy(self.model_path, self.settings.gradient_checkpointing)
        if self.cfg.model.lora.enabled:
            model = lora.apply_lora(model, self.cfg.model.lora)
        return model

    def init_training(self, master_addr: str, master_port: int) -> None:
        super().init_training(master_addr, master_port)
        self.sends_adapter = self.cfg.sends_adapter()  # resolved once, used every sync
        if self.sends_adapter:
            self.manifest = lora.adapter_manifest(self._module)
        else:
            self.manifest = lora.policy_manifest(self._module)

    def _synced_parameters(self, device) -> export.Named:
        """What a weight sync sends (`manifest`): the policy (with LoRA the base weights with
        the adapters merged in), or only the adapter matrices (`sync.lora` adapter: the
        engines apply them to the base they loaded). A collective under ZeRO-3: every rank
        iterates to the end."""
        if self.sends_adapter:
            return lora.adapter_parameters(export.full_parameters(self._module, device))
        return lora.policy_parameters(self._module, device)

    def forward(self, model, mb: Tensors) -> ForwardOutput:
        """Log-probs at the sampling temperature, and the entropy of each prediction (with
        gradient only when the loss has an entropy bonus; otherwise a diagnostic)."""
        t, ids = self.cfg.rollout.temperature, mb["input_ids"]
        width = ids.shape[1]
        # the prompts' logits are never used (without a completion mask: every position)
        keep = completion_tail(mb["completion_mask"]) if "completion_mask" in mb else width
        logits = model_logits(model, ids, mb["attention_mask"], keep)
        logprobs = left_pad(token_logprobs(logits, ids[:, width - keep :], t), width)
        if self.algorithm.entropy_grad:
            entropy = token_entropy(logits, t)
        else:
            with torch.no_grad():
                entropy = token_entropy(logits.detach(), t)
        return ForwardOutput(logprobs=logprobs, entropy=left_pad(entropy, width))

    def forward_pass(self, shard, field: str) -> np.ndarray:
        """`DeepSpeedWorker.forward_pass`; "base_logprobs": the log-probs of the LoRA model's
        base, its adapters off (the starting policy: the reference for free)."""
        if field != "base_logprobs":
            return super().forward_pass(shard, field)
        with self._module.disable_adapter():
            return super().forward_pass(shard, "logprobs")

    def loss(self, out: ForwardOutput, mb: Tensors):
        return self.algorithm.loss(out, mb)

    # ------------------------------------------------------------------ weights out
    def weight_manifest(self) -> list[ParamSpec]:
        self._engine()
        return self.manifest

    def host_sync_store(self, world_size: int) -> tuple[str, int]:
        """Rank 0: start the sync group's store; the (address, port) receivers join."""
        if self.sync is not None:  # a rebuild: the old group goes first
            self.sync.close()
            self.sync = None
        self._sync_store = host_store(self.node_address(), world_size, self.cfg.sync.timeout_s)
        return self.node_address(), int(self._sync_store.port)

    def init_weight_sync(self, endpoint: SyncEndpoint) -> None:
        """Rank 0 joins the sync group as its sender; other ranks only help gather (ZeRO-3)."""
        if self.rank != 0:
            return
        if self.sync is not None:
            self.sync.close()
            self.sync = None
        device = (
            torch.device("cuda", torch.cuda.current_device())
            if endpoint.backend == "nccl"
            else torch.device("cpu")
        )
        store, self._sync_store = getattr(self, "_sync_store", None), None
        self.sync = WeightSyncGroup.join(endpoint.for_rank(0), device, store)

    def broadcast_weights(self, version: int, bucket_bytes: int) -> dict[str, float]:
        """Rank 0 streams full tensors to the rollout workers; every rank joins the gathers."""
        if self.rank == 0 and self.sync is None:
            raise RuntimeError(f"{self.name}: init_weight_sync has not run")
        device = self.sync.device if self.sync is not None else None
        named = self._synced_parameters(device)
        if self.rank != 0:
            export.drain(named)
            return {}
        assert self.sync is not None
        try:
            return self.sync.send(named, self.manifest, bucket_bytes, version)
        finally:
            export.drain(named)  # even on failure, so the other ranks' gathers complete

    def save_pretrained(self, path: str) -> None:
        """Rank 0 writes an HF folder; under ZeRO-3 the other ranks help gather."""
        import torch.distributed as dist

        module = self._module
        named = export.full_parameters(module, "cpu")  # gathered once, for both files
        if self.rank == 0:
            gathered = dict(named)
            if lora.is_lora(module):  # the merged policy, and the adapter alone (PEFT's layout)
                policy = dict(lora.merged_parameters(module, iter(gathered.items())))
                adapter = lora.adapter_state(iter(gathered.items()))
                lora.save_adapter(module, adapter, f"{path}/{lora.ADAPTER_FOLDER}")
            else:
                policy = gathered
            export.save_hf(lora.plain_model(module), policy, path, self.model_path)
        else:
            export.drain(named)
        dist.barrier()  # every rank returns once the folder is complete

    def full_weights(self) -> dict[str, np.ndarray]:
        """Every full parameter as a numpy copy, on every rank (tests and debugging)."""
        return {
            name: t.float().cpu().numpy().copy()
            for name, t in export.full_parameters(self._module, "cpu")
        }

    def state_checksum(self) -> float:
        """Sum of all full weights (float64), the same on every rank."""
        return export.checksum(export.full_parameters(self._module, "cpu"))

    def shutdown(self) -> None:
        if self.sync is not None:
            self.sync.close()
            self.sync = None
        super().shutdown()
