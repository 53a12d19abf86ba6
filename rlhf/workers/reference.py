"""ReferenceWorker: the frozen reference policy's per-token log-probs of a batch's rows."""

from __future__ import annotations

import numpy as np
import torch

from rlhf.batch import TrainBatch, row_micro_batches, trimmed_width
from rlhf.config import Config
from rlhf.models.dtypes import pool_dtype
from rlhf.models.logprobs import model_token_logprobs
from rlhf.workers.common import WorkerIdentity, setup_worker_process


class ReferenceWorker(WorkerIdentity):
    def __init__(self, cfg: Config, index: int, model_path: str) -> None:
        from transformers import AutoModelForCausalLM

        setup_worker_process("reference", cfg, cfg.run.seed)
        self.name = f"reference-{index}"
        # the learner's limits (the reference section has none of its own)
        self.micro_batch_size = cfg.learner.micro_batch_size
        self.max_tokens = cfg.learner.max_tokens_per_micro_batch
        self.temperature = cfg.rollout.temperature
        self.device = (
            "cuda" if cfg.topology.reference.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        )
        dtype = getattr(torch, pool_dtype(cfg, "reference", self.device == "cuda"))
        self.model = (
            AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(self.device).eval()
        )
        self.model.requires_grad_(False)

    @torch.no_grad()
    def logprobs(self, batch: TrainBatch) -> np.ndarray:
        """[rows, T] log-probs of every token (at the sampling temperature, like the learner),
        in the batch's layout: position t holds log p(token t | tokens < t)."""
        # Ray hands over read-only arrays: writable copies for torch
        ids = torch.from_numpy(np.require(batch["input_ids"], requirements=["W"]))
        mask = torch.from_numpy(np.require(batch["attention_mask"], requirements=["W"]))
        out = np.zeros(ids.shape, dtype=np.float32)
        lengths = batch.lengths()
        for rows in row_micro_batches(lengths, self.micro_batch_size, self.max_tokens):
            width = trimmed_width(lengths[rows])
            sub_ids, sub_mask = ids[rows, :width], mask[rows, :width]
            lp = model_token_logprobs(
                self.model, sub_ids.to(self.device), sub_mask.to(self.device), self.temperature
            )
            out[rows, :width] = (lp.float().cpu() * sub_mask).numpy()
        return out
