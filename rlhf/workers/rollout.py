"""RolloutWorker: one generation engine (vLLM, or HF as a fallback) holding the policy."""

from __future__ import annotations

from rlhf.config import Config
from rlhf.sync.buckets import ParamSpec
from rlhf.sync.group import SyncEndpoint
from rlhf.types import Rollout
from rlhf.workers.common import setup_worker_process


class RolloutWorker:
    def __init__(self, cfg: Config, index: int, model_path: str) -> None:
        from transformers import AutoTokenizer

        from rlhf.engines import make_engine

        setup_worker_process(cfg.topology.rollout.num_cpus, cfg.run.seed + 7919 * (index + 1))
        self.cfg = cfg
        self.name = f"rollout-{index}"
        self.index = index
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.engine = make_engine(cfg.rollout, model_path, seed=cfg.run.seed + index)
        self.policy_version = 0

    def ready(self) -> str:
        return self.name

    def generate(
        self, prompt_ids: list[list[int]], n: int, seed: int | None, greedy: bool = False
    ) -> Rollout:
        r = self.cfg.rollout
        out = self.engine.generate(
            prompt_ids,
            n=n,
            max_new_tokens=r.max_new_tokens,
            temperature=0.0 if greedy else r.temperature,
            top_p=r.top_p,
            top_k=r.top_k,
            seed=seed,
        )
        return Rollout(
            prompt_ids=[p for p in prompt_ids for _ in range(n)],
            completion_ids=out.completion_ids,
            sampler_logprobs=out.logprobs,
            finish_reasons=out.finish_reasons,
            prompt_index=[i for i in range(len(prompt_ids)) for _ in range(n)],
            policy_version=self.policy_version,
            completion_texts=self.tokenizer.batch_decode(
                out.completion_ids, skip_special_tokens=True
            ),
            worker=self.name,
        )

    def init_weight_sync(self, endpoint: SyncEndpoint) -> None:
        self.engine.init_weight_sync(endpoint)

    def receive_weights(self, manifest: list[ParamSpec], bucket_bytes: int, version: int) -> int:
        self.engine.receive_weights(manifest, bucket_bytes, version)
        self.policy_version = version
        return version

    def shutdown(self) -> None:
        self.engine.close_weight_sync()
        self.engine.shutdown()
