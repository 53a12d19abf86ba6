"""The LLM judge (`reward.judge.kind=llm`): a generative judge model on a vLLM engine of the
reward worker's own.

One `ask` is one presentation order: every pair becomes the template filled with (prompt,
a, b), all of them go to one greedy generate call that returns each step's top log-probs, and
each output becomes P(a > b) (rlhf.rewards.verdicts): renormalised A/B probabilities at the
verdict token, or 1/0 from the parsed verdict, or NaN when there is none. The worker asks
both orders and averages (rlhf.rewards.judges.in_both_orders).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from rlhf.configbase import ConfigError, Section
from rlhf.rewards.verdicts import (
    DEFAULT_TEMPLATE,
    fill_template,
    missing_placeholders,
    parse_verdict,
    verdict_probability,
)


class LLMJudgeConfig(Section):
    path: str | None = Field(
        None, description="kind=llm: the judge model folder (Hugging Face format, with tokenizer)"
    )
    template: str = Field(
        DEFAULT_TEMPLATE, description="the judge's prompt; {prompt}, {a} and {b} are filled in"
    )
    max_new_tokens: int = Field(8, gt=0, description="greedy tokens generated per verdict")
    top_logprobs: int = Field(
        20, ge=2, description="log-probs read per step; A and B must both be among them"
    )
    kv_cache_bytes: int = Field(64 * 2**20, gt=0, description="the judge engine's KV cache (CPU)")
    max_model_len: int | None = Field(
        None, gt=0, description="None: the judge model's own context length"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gpu_memory_utilization: float = Field(0.2, gt=0, le=1, description="on GPU")

    @field_validator("template")
    @classmethod
    def _has_placeholders(cls, template: str) -> str:
        missing = missing_placeholders(template)
        if missing:
            raise ValueError(f"the template must contain {', '.join(missing)}")
        return template


def judge_model_folder(path: str | None) -> str:
    """The judge model folder, checked where the engine starts (it may be a cluster node)."""
    if not path:
        raise ConfigError("reward.judge.llm.path must name the judge model folder for kind=llm")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"reward.judge.llm.path: {str(folder)!r} is not a folder")
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"reward.judge.llm.path: {str(folder)!r} is not a Hugging Face model folder "
            "(no config.json)"
        )
    return str(folder)


class LLMJudge:
    def __init__(self, cfg: LLMJudgeConfig, seed: int) -> None:
        from transformers import AutoConfig, AutoTokenizer

        from rlhf.engines.vllm_engine import VLLMEngine

        path = judge_model_folder(cfg.path)
        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        max_len = cfg.max_model_len or AutoConfig.from_pretrained(path).max_position_embeddings
        self.engine = VLLMEngine(
            path,
            seed=seed,
            max_model_len=max_len,
            kv_cache_bytes=cfg.kv_cache_bytes,
            dtype=cfg.dtype,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            max_logprobs=cfg.top_logprobs,
        )
        self.max_model_len = max_len

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def _verdict_token(self, completion: list[int], char_offset: int) -> int:
        """Index of the generated token holding the character at `char_offset` of the text."""
        for i in range(len(completion)):
            text = self.tokenizer.decode(completion[: i + 1], skip_special_tokens=True)
            if len(text) > char_offset:
                return i
        return -1

    def ask(
        self, prompts: list[str], completions_a: list[str], completions_b: list[str]
    ) -> tuple[np.ndarray, dict[str, float]]:
        """P(a > b) for each pair in this one order (NaN: no answer), and counts:
        judge/unparsed (no verdict in the output), judge/too_long (the filled template does
        not fit the context), judge/hard_verdicts (verdicts without both letters among the
        top log-probs, given as 1/0)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        n = len(prompts)
        if not (len(completions_a) == len(completions_b) == n):
            raise ValueError(
                f"{n} prompts, {len(completions_a)} and {len(completions_b)} completions"
            )
        room = self.max_model_len - self.cfg.max_new_tokens
        ids = [
            self.tokenizer(fill_template(self.cfg.template, p, a, b)).input_ids
            for p, a, b in zip(prompts, completions_a, completions_b, strict=True)
        ]
        fits = [i for i, row in enumerate(ids) if len(row) <= room]
        params = SamplingParams(
            n=1,
            max_tokens=self.cfg.max_new_tokens,
            temperature=0.0,
            logprobs=self.cfg.top_logprobs,
            detokenize=False,  # decoded here with the judge's own tokenizer
        )
        outputs = (
            self.engine.llm.generate(
                [TokensPrompt(prompt_token_ids=ids[i]) for i in fits], params, use_tqdm=False
            )
            if fits
            else []
        )
        probs = np.full(n, np.nan)
        unparsed = hard = 0
        for i, request in zip(fits, outputs, strict=True):
            out = request.outputs[0]
            tokens = list(out.token_ids)
            verdict, offset = parse_verdict(self.tokenizer.decode(tokens, skip_special_tokens=True))
            if verdict is None:
                unparsed += 1
                continue
            at = self._verdict_token(tokens, offset)
            step = out.logprobs[at] if 0 <= at < len(out.logprobs or []) else {}
            candidates = [(self._token_text(t), lp.logprob) for t, lp in step.items()]
            probs[i], from_logprobs = verdict_probability(verdict, candidates)
            hard += not from_logprobs
        metrics = {"judge/unparsed": float(unparsed), "judge/hard_verdicts": float(hard)}
        if len(fits) < n:
            metrics["judge/too_long"] = float(n - len(fits))
        return probs, metrics

    def shutdown(self) -> None:
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            engine.shutdown()
