"""A generation engine on plain transformers `generate` (with its KV cache).

Slower than vLLM, but simple and exact: a fallback, a reference for tests, and later the
sampler for mixtures of policies (IPO-MD).
"""

from __future__ import annotations

import torch

from rlhf.engines.base import Generation, finish_reason
from rlhf.sync.buckets import ParamSpec
from rlhf.sync.group import SyncEndpoint, WeightSyncGroup


class HFEngine:
    def __init__(self, model_path: str, *, seed: int, dtype: str = "float32") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(seed)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
        self.model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)  # for stop strings
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.model.config.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = gen.pad_token_id if gen.pad_token_id is not None else min(self.eos_ids)
        self._sync: WeightSyncGroup | None = None

    # ------------------------------------------------------------------ generation
    def _config(
        self,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        ignore_eos: bool = False,
    ):
        # A fresh config: a model's own generation_config (repetition penalty, min_p, ...)
        # must not change the sampling distribution the learner assumes.
        from transformers import GenerationConfig

        sample = temperature > 0
        # An empty list, not None: generate() fills a None eos_token_id from the model's own
        # config. (min_new_tokens would also forbid sampling EOS, which vLLM's ignore_eos does not.)
        eos = [] if ignore_eos else sorted(self.eos_ids)
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            temperature=temperature if sample else 1.0,
            top_p=top_p if sample else 1.0,
            top_k=top_k if sample else 0,
            eos_token_id=eos,
            pad_token_id=self.pad_id,
            return_dict_in_generate=True,
            output_scores=True,  # scores = logits after temperature/top-k/top-p
        )

    @torch.inference_mode()
    def generate(
        self,
        prompt_ids: list[list[int]],
        *,
        n: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        mixture_coef: float = 0.0,
        ignore_eos: bool = False,
        stop: list[str] | None = None,
    ) -> Generation:
        if mixture_coef != 0:
            raise ValueError(
                f"mixture_coef={mixture_coef!r}: the HF engine samples the policy only"
            )
        if seed is not None:
            torch.manual_seed(seed)
        rows = [p for p in prompt_ids for _ in range(n)]  # prompt-major
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding: every row's next token is at `width`
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            generation_config=self._config(max_new_tokens, temperature, top_p, top_k, ignore_eos),
        )
        new = out.sequences[:, width:]
        logp = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1)
        picked = torch.gather(logp, -1, new.unsqueeze(-1)).squeeze(-1)
        result = Generation()
        for i in range(len(rows)):
            toks = new[i].tolist()
            end = len(toks)
            if not ignore_eos:  # the completion ends at its first EOS (kept)
                end = next((j + 1 for j, t in enumerate(toks) if t in self.eos_ids), end)
            reason = finish_reason(toks[:end], self.eos_ids, ignore_eos)
            if stop and (cut := self._stop_end(toks[:end], stop)) is not None:
                end, reason = cut, "stop"
            result.add(toks[:end], picked[i, :end].tolist(), reason)
        return result

    def _stop_end(self, toks: list[int], stop: list[str]) -> int | None:
        """The length of the shortest prefix whose text holds a stop string (None: none does).
        Generation ran past it here (transformers cannot stop on a string per row); the
        tokens after it are dropped, which leaves the kept ones' distribution unchanged."""
        for j in range(1, len(toks) + 1):
            text = self.tokenizer.decode(toks[:j], skip_special_tokens=True)
            if any(s in text for s in stop):
                return j
        return None

    # ------------------------------------------------------------------ weight sync
    def init_weight_sync(self, endpoint: SyncEndpoint) -> None:
        self.close_weight_sync()
        device = next(self.model.parameters()).device if endpoint.backend == "nccl" else "cpu"
        self._sync = WeightSyncGroup.join(endpoint, device)

    @torch.no_grad()
    def receive_weights(self, manifest: list[ParamSpec], bucket_bytes: int, version: int) -> None:
        if self._sync is None:
            raise RuntimeError("receive_weights before init_weight_sync")
        state = self.model.state_dict()
        unknown = []
        for name, tensor in self._sync.receive(manifest, bucket_bytes, version):
            if name in state:  # copy bucket by bucket: no second full copy of the model
                state[name].copy_(tensor)
            else:
                unknown.append(name)  # keep receiving: the sender must not be left hanging
        if unknown:
            raise KeyError(f"received weights this model does not have: {unknown[:5]}")

    def close_weight_sync(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    def shutdown(self) -> None:
        self.close_weight_sync()
