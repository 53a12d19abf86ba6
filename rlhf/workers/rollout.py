"""RolloutWorker: one generation engine (vLLM, or HF as a fallback) holding the policy."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from rlhf.config import Config
from rlhf.engines.base import Generation
from rlhf.envs.base import resolve_environment
from rlhf.envs.episodes import EpisodeLimits, run_episodes
from rlhf.envs.tools import ToolEnvironment, resolve_tools
from rlhf.sync.buckets import ParamSpec
from rlhf.sync.group import SyncEndpoint
from rlhf.types import Rollout
from rlhf.workers.common import WorkerIdentity, setup_worker_process


class RolloutWorker(WorkerIdentity):
    def __init__(
        self, cfg: Config, index: int, model_path: str, max_model_len: int | None = None
    ) -> None:
        from transformers import AutoTokenizer

        from rlhf.engines import make_engine
        from rlhf.models.dtypes import pool_dtype

        setup_worker_process("rollout", cfg, cfg.run.seed + 7919 * (index + 1))
        self.cfg = cfg
        self.name = f"rollout-{index}"
        self.index = index
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        # The reference of the mixture is the initial policy, as for the reference pool.
        self.mixture = cfg.make_algorithm().sampling_mixture
        self.sends_adapter = cfg.sends_adapter()  # resolved once, used every sync
        self.engine = make_engine(
            cfg.rollout,
            model_path,
            seed=cfg.run.seed + index,
            mixture_reference=model_path if self.mixture is not None else None,
            sleep_mode=uses_sleep_mode(cfg),
            # the HF engine computes on the CPU wherever it runs
            dtype=pool_dtype(cfg, "rollout", on_gpus(cfg) and cfg.rollout.engine == "vllm"),
            max_model_len=max_model_len,
            lora_rank=cfg.model.lora.rank if self.sends_adapter else 0,
        )
        self.policy_version = 0
        r = cfg.rollout
        self.environment: Callable[[], Any] | None = None
        env_stop: list[str] = []
        if r.environment:
            self.environment = resolve_environment(r.environment)
            env_stop = list(getattr(self.environment, "stop", []))
        elif r.tools:
            self.environment = functools.partial(ToolEnvironment, resolve_tools(r.tools))
            env_stop = ToolEnvironment.stop
        self.stop = list(r.stop) + env_stop

    def generate(
        self,
        prompt_ids: list[list[int]],
        n: int,
        seed: int | None,
        greedy: bool = False,
        contexts: list[tuple[str, dict]] | None = None,
    ) -> Rollout:
        """n samples per prompt, prompt-major. With a sampling mixture (IPO-MD, Nash-MD) the
        last `m` samples of each prompt come from the policy/reference mixture and the first
        n - m from the policy; greedy evaluation always uses the policy alone. With an
        environment each sample is an episode; `contexts` (each prompt's text and columns)
        reach the environment's reset."""
        started = time.perf_counter()
        r = self.cfg.rollout
        settings = dict(
            max_new_tokens=r.max_new_tokens,
            temperature=0.0 if greedy else r.temperature,
            top_p=r.top_p,
            top_k=r.top_k,
            ignore_eos=r.ignore_eos and not greedy,  # evaluation answers stop at EOS
        )
        if self.environment is not None:
            if contexts is None:
                raise ValueError("an environment's episodes need the prompts' contexts")
            return self._episodes(prompt_ids, n, seed, contexts, settings, started)
        if self.stop:
            settings["stop"] = self.stop
        m = 0 if greedy or self.mixture is None else min(self.mixture.samples, n)
        from_mixture: list[bool] = []
        if m == 0:
            out = self.engine.generate(prompt_ids, n=n, seed=seed, **settings)
        else:
            assert self.mixture is not None
            mixed = self.engine.generate(
                prompt_ids, n=m, seed=seed, mixture_coef=self.mixture.coef, **settings
            )
            plain = (
                self.engine.generate(
                    prompt_ids, n=n - m, seed=None if seed is None else seed + 1, **settings
                )
                if n > m
                else Generation()
            )
            out = interleave(plain, mixed, n - m, m)
            from_mixture = ([False] * (n - m) + [True] * m) * len(prompt_ids)
        return self._rollout(prompt_ids, n, out, started, from_mixture=from_mixture)

    def _rollout(
        self, prompt_ids: list[list[int]], n: int, out: Generation, started: float, **extra: Any
    ) -> Rollout:
        """A call's samples (n per prompt, prompt-major) as the Rollout the controller takes;
        `extra`: the Rollout's optional fields (mixture flags, an episode's columns)."""
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
            seconds=time.perf_counter() - started,
            **extra,
        )

    def _episodes(
        self,
        prompt_ids: list[list[int]],
        n: int,
        seed: int | None,
        contexts: list[tuple[str, dict]],
        settings: dict,
        started: float,
    ) -> Rollout:
        r = self.cfg.rollout
        limits = EpisodeLimits(
            max_turns=r.max_turns,
            max_new_tokens=settings.pop("max_new_tokens"),
            max_tokens=r.completion_tokens(),
            max_observation_tokens=r.max_observation_tokens,
            timeout_s=r.env_timeout_s,
            on_error=self.cfg.reward.on_error,
            turn_rewards=r.turn_rewards,
            turn_discount=r.turn_discount,
        )
        assert self.environment is not None
        eps = run_episodes(
            self.engine,
            self.tokenizer,
            self.environment,
            contexts,
            prompt_ids,
            n,
            seed,
            limits,
            stop=self.stop or None,
            **settings,
        )
        return self._rollout(
            prompt_ids,
            n,
            eps.generation,
            started,
            policy_masks=eps.policy_masks,
            env_rewards=eps.rewards,
            turns=eps.turns,
            metrics=eps.metrics,
            token_rewards=eps.token_rewards,
        )

    def sleep(self) -> bool:
        """Free the engine's GPU memory while colocated pools take their turn."""
        return bool(getattr(self.engine, "sleep", lambda: False)())

    def wake_up(self) -> bool:
        return bool(getattr(self.engine, "wake_up", lambda: False)())

    def init_weight_sync(self, endpoint: SyncEndpoint) -> None:
        self.engine.init_weight_sync(endpoint)

    def receive_weights(self, manifest: list[ParamSpec], bucket_bytes: int, version: int) -> int:
        """Load weights version `version` (full tensors, or with `sync.lora` adapter the LoRA
        adapter alone)."""
        if self.sends_adapter:
            from rlhf.models.lora import adapter_config_of

            config = adapter_config_of(self.cfg.model.lora, [s.name for s in manifest])
            self.engine.receive_adapter(manifest, bucket_bytes, version, config)
        else:
            self.engine.receive_weights(manifest, bucket_bytes, version)
        self.policy_version = version
        return version

    def shutdown(self) -> None:
        self.engine.close_weight_sync()
        self.engine.shutdown()


def on_gpus(cfg: Config) -> bool:
    return cfg.topology.rollout.num_gpus > 0


def uses_sleep_mode(cfg: Config) -> bool:
    """A colocated rollout pool on GPUs frees its memory while the other pools compute."""
    return cfg.is_colocated("rollout") and on_gpus(cfg)


def interleave(first: Generation, second: Generation, n_first: int, n_second: int) -> Generation:
    """Per prompt: its n_first samples of `first`, then its n_second of `second`."""
    out = Generation()
    prompts = len(second.completion_ids) // n_second if n_second else 0
    for p in range(prompts):
        for gen, k in ((first, n_first), (second, n_second)):
            for j in range(p * k, (p + 1) * k):
                out.add(gen.completion_ids[j], gen.logprobs[j], gen.finish_reasons[j])
    return out
