"""ReferenceWorker: the frozen reference policy's per-token log-probs of completions."""

from __future__ import annotations

import torch

from rlhf.config import Config
from rlhf.models.logprobs import model_token_logprobs, pad_rows
from rlhf.workers.common import setup_worker_process


class ReferenceWorker:
    def __init__(self, cfg: Config, index: int, model_path: str) -> None:
        from transformers import AutoModelForCausalLM

        setup_worker_process(cfg.topology.reference.num_cpus, cfg.run.seed)
        self.name = f"reference-{index}"
        self.micro_batch_size = cfg.learner.micro_batch_size
        self.temperature = cfg.rollout.temperature
        self.device = (
            "cuda" if cfg.topology.reference.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        )
        dtype = getattr(torch, cfg.model.dtype)
        self.model = (
            AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(self.device).eval()
        )
        self.model.requires_grad_(False)
        self.pad_id = self.model.config.pad_token_id or 0

    def ready(self) -> str:
        return self.name

    @torch.no_grad()
    def logprobs(
        self, prompt_ids: list[list[int]], completion_ids: list[list[int]]
    ) -> list[list[float]]:
        """Log-probs of each completion token (at the sampling temperature, like the learner)."""
        out: list[list[float]] = []
        for start in range(0, len(prompt_ids), self.micro_batch_size):
            rows = [
                list(p) + list(c)
                for p, c in zip(
                    prompt_ids[start : start + self.micro_batch_size],
                    completion_ids[start : start + self.micro_batch_size],
                    strict=True,
                )
            ]
            ids, mask = pad_rows(rows, self.pad_id)
            lp = model_token_logprobs(
                self.model, ids.to(self.device), mask.to(self.device), self.temperature
            )
            lp = lp.float().cpu()
            for i, row in enumerate(rows):
                p_len = len(prompt_ids[start + i])
                out.append(lp[i, p_len : len(row)].tolist())
        return out
