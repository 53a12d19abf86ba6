"""A generation engine around `vllm.LLM`, with learner -> engine weight sync.

On CPU the engine runs in the creating process (a Ray actor's, a script's; see
`cpu_environment`); on GPU vLLM runs the model in a worker process of its own. The weight-sync
receiver lives with the model (`vllm_extension`), reached through `collective_rpc`, so received
buckets are loaded where the model is.
"""

from __future__ import annotations

import gc
import logging
import os
import time

import numpy as np
import torch

from rlhf.config import VLLM_MAX_LORA_RANK
from rlhf.engines.base import Generation, finish_reason
from rlhf.engines.vllm_extension import manifest_to_wire
from rlhf.sync.buckets import ParamSpec
from rlhf.sync.group import SyncEndpoint

log = logging.getLogger(__name__)

EXTENSION = "rlhf.engines.vllm_extension.WeightSyncExtension"


def cpu_environment(threads: int) -> dict[str, str]:
    """Environment for vLLM's CPU processes, which they inherit from the creating process.

    vLLM's default ("auto") pins its worker to the cores of one NUMA node minus one core
    reserved for its scheduler: on a 2-core machine every engine lands on the same single
    core. Engines here share the machine with other engines and a learner, so we do not pin
    ("nobind") and cap OpenMP threads at the CPU share instead. OMP_WAIT_POLICY=PASSIVE
    makes idle OpenMP threads sleep instead of spinning, so a finished engine does not eat
    the cores the learner (or another engine) needs next.
    VLLM_ENABLE_V1_MULTIPROCESSING=0 (with the "uni" executor, see `VLLMEngine`) runs the
    engine in the creating process: its worker process would otherwise busy-poll a
    shared-memory queue for a second after every call (measured: 1.0 core-second burned per
    call, against 0.03 in-process), stealing a core from whatever runs next; the in-process
    engine generated the default batch 17% faster (0.27 s against 0.32 s) and starts without
    a second import of vLLM. Several engines may share a process (one extension class serves
    them all). An engine's `shutdown` tears down the process's torch.distributed world
    (vLLM's engine core does): a process that needs a group of its own makes it after.
    A user's own VLLM_CPU_OMP_THREADS_BIND / OMP_* / VLLM_ENABLE_V1_MULTIPROCESSING settings
    win over these.
    """
    env = {
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": str(threads),
        "OMP_WAIT_POLICY": "PASSIVE",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }
    return env


def request_seeds(seed: int | None, requests: int) -> list[int | None]:
    """One seed per request, drawn from `seed`. vLLM seeds sample j of a request with its
    seed + j: a seed shared by every request of a call would give sample j of every prompt
    the same random draws (correlated samples across prompts)."""
    if seed is None:
        return [None] * requests
    return [int(x) for x in np.random.default_rng(seed).integers(0, 2**31 - 1, size=requests)]


class _ChatWarmupTooLong(logging.Filter):
    """Drops vLLM's "Chat template warmup failed" record when the cause is only that its dummy
    chat is longer than the engine's context (a run sized to short prompts, e.g. the default's
    10 tokens): a 27-line traceback in every rollout log that says nothing about the run.
    Any other warm-up failure still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        too_long = type(exc).__name__ == "VLLMValidationError" and "context length" in str(exc)
        return not (too_long and record.getMessage().startswith("Chat template warmup failed"))


def _quiet_chat_warmup_length_error() -> None:
    renderer_log = logging.getLogger("vllm.renderers.base")
    if not any(isinstance(f, _ChatWarmupTooLong) for f in renderer_log.filters):
        renderer_log.addFilter(_ChatWarmupTooLong())


def _is_cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


# vLLM's max_lora_rank choices (the config refuses larger ranks for adapter-only syncs)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, VLLM_MAX_LORA_RANK)


def vllm_lora_rank(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds adapters of `rank`."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(
        f"model.lora.rank={rank} exceeds vLLM's largest LoRA rank {VLLM_LORA_RANKS[-1]}"
    )


class VLLMEngine:
    def __init__(
        self,
        model_path: str,
        *,
        seed: int,
        max_model_len: int | None,
        kv_cache_bytes: int,
        dtype: str = "float32",
        enforce_eager: bool = True,
        gpu_memory_utilization: float = 0.4,
        cpu_threads: int | None = None,
        mixture_reference: str | None = None,
        max_logprobs: int | None = None,
        sleep_mode: bool = False,
        lora_rank: int = 0,
    ) -> None:
        """`mixture_reference`: a reference model folder (same tokenizer as the policy). With
        it, the engine samples the geometric mixture of the policy and the reference (see
        `generate`'s `mixture_coef` and rlhf/engines/mixture.py): both models run at every
        step and keep a KV cache each, so a fixed `kv_cache_bytes` holds half the tokens.
        None: a plain engine on the policy.
        `max_logprobs`: the most log-probs a request may ask for (vLLM's default when None;
        -1 = the whole vocabulary, for tests that read full distributions).
        `sleep_mode`: on GPU, let `sleep` free the engine's memory while colocated pools take
        their turn (vLLM's sleep mode); on CPU memory is not partitioned, so it does nothing.
        `lora_rank`: above 0, the engine runs the base it loads plus the LoRA adapter of the
        latest `receive_adapter` (vLLM's LoRA support; its CPU kernels on CPU)."""
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # before vllm's logger exists
        on_cpu = _is_cpu_platform()
        if on_cpu:
            # Must be in os.environ before vLLM reads it and spawns its processes. The thread
            # count follows this process's torch setting (the worker's CPU share), not a
            # stale OMP_NUM_THREADS (Ray sets it to the actor's num_cpus).
            env = cpu_environment(cpu_threads or torch.get_num_threads())
            os.environ["OMP_NUM_THREADS"] = env.pop("OMP_NUM_THREADS")
            for key, value in env.items():
                os.environ.setdefault(key, value)
        from vllm import LLM

        # On CPU the KV cache is sized in bytes; on GPU by the memory fraction.
        kwargs = {"kv_cache_memory_bytes": kv_cache_bytes} if on_cpu else {}
        if on_cpu and os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":
            kwargs["distributed_executor_backend"] = "uni"  # the model runs in this process
        if max_logprobs is not None:
            kwargs["max_logprobs"] = max_logprobs
        self.can_sleep = sleep_mode and not on_cpu
        if self.can_sleep:
            kwargs["enable_sleep_mode"] = True
        self.lora_rank = lora_rank
        self._adapter = None  # the LoRARequest generation uses (None: the base alone)
        self._adapter_dir: str | None = None
        if lora_rank > 0:
            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=vllm_lora_rank(lora_rank))
        self.mixture_reference = mixture_reference
        self._mixture_coef = 0.0  # b as last set in the worker (a mixture engine only)
        if mixture_reference is not None:
            from rlhf.engines.mixture import mixture_overrides, register_mixture_model

            register_mixture_model()  # the driver's model config checks the architecture
            kwargs["hf_overrides"] = mixture_overrides(mixture_reference, self._mixture_coef)
        t0 = time.perf_counter()
        _quiet_chat_warmup_length_error()
        # vLLM's start-up runs five full garbage collections, each walking every object the
        # imports of torch and vLLM made (~0.2 s each on CPU), then freezes the heap itself
        # (`freeze_gc_heap`). Freezing what exists now, after one collection, makes those
        # collections cheap: 1.4 s -> 0.7 s per engine start on the tiny model, measured.
        gc.collect()
        gc.freeze()
        self.llm = LLM(
            model=model_path,
            seed=seed,
            max_model_len=max_model_len,
            dtype=dtype,
            enforce_eager=enforce_eager,
            gpu_memory_utilization=gpu_memory_utilization,
            worker_extension_cls=EXTENSION,
            # log-probs of the distribution actually sampled (after temperature, top-k/p)
            logprobs_mode="processed_logprobs",
            # n samples of a prompt share its prefill (whole KV blocks: 128 tokens on CPU)
            enable_prefix_caching=True,
            disable_log_stats=True,
            **kwargs,
        )
        self.start_seconds = time.perf_counter() - t0
        hf_config = self.llm.llm_engine.model_config.hf_config
        config_eos = getattr(hf_config, "eos_token_id", None)
        ids = [self.llm.get_tokenizer().eos_token_id]
        ids += config_eos if isinstance(config_eos, list) else [config_eos]
        self.eos_ids: set[int] = {i for i in ids if i is not None}
        self._sync_timeout: float | None = None
        log.info("vLLM engine for %s started in %.1fs", model_path, self.start_seconds)

    # ------------------------------------------------------------------ generation
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
        """See `GenerationEngine.generate`. On a mixture engine (`mixture_reference`), samples
        come from softmax(((1-b)·policy_logits + b·reference_logits) / T), then top-k/top-p,
        with b = `mixture_coef` in [0, 1] (b = 0: the policy, still paying for the reference's
        forward), and the returned log-probs are that mixture's (processed log-probs), the
        behaviour policy's, not the policy's. A plain engine accepts only mixture_coef = 0."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self.set_mixture_coef(mixture_coef)
        greedy = temperature == 0
        params = [
            SamplingParams(
                n=n,
                max_tokens=max_new_tokens,
                temperature=temperature,
                top_p=1.0 if greedy else top_p,
                top_k=0 if greedy else top_k,
                seed=request_seed,
                logprobs=0,  # the sampled token's log-prob only
                # callers decode what they need; vLLM finds stop strings in decoded text
                detokenize=bool(stop),
                stop=list(stop) if stop else None,
                include_stop_str_in_output=True,  # the tokens hold it: the text must agree
                ignore_eos=ignore_eos,
            )
            for request_seed in request_seeds(seed, len(prompt_ids))
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self._adapter)
        result = Generation()
        for request in outputs:
            for out in sorted(request.outputs, key=lambda o: o.index):
                toks = list(out.token_ids)
                # a stop string ends a completion on whichever token completed it
                stopped = bool(stop) and out.stop_reason in stop
                result.add(
                    toks,
                    [step[t].logprob for step, t in zip(out.logprobs, toks, strict=True)],
                    "stop" if stopped else finish_reason(toks, self.eos_ids, ignore_eos),
                )
        return result

    @property
    def is_mixture(self) -> bool:
        return self.mixture_reference is not None

    def set_mixture_coef(self, coef: float) -> None:
        """Set b for the following generate calls (what `generate(mixture_coef=...)` does)."""
        if not self.is_mixture:
            if coef != 0:
                raise ValueError(
                    f"mixture_coef={coef!r} needs a mixture engine "
                    "(VLLMEngine(..., mixture_reference=<reference model folder>))"
                )
            return
        from rlhf.engines.mixture import check_mixture_coef

        b = check_mixture_coef(coef)
        if b != self._mixture_coef:
            # b is engine-wide, read by the model at every step; no request is in flight
            # between generate calls, so changing it here affects only the next call.
            self.llm.collective_rpc("rlhf_set_mixture_coef", args=(b,))
            self._mixture_coef = b

    # ------------------------------------------------------------------ colocation (GPU)
    def sleep(self) -> bool:
        """Free the GPU memory of weights (offloaded to host) and KV cache while other
        colocated pools compute (untested here: no GPU). Returns whether it slept."""
        if self.can_sleep:
            self.llm.sleep(level=1)
        return self.can_sleep

    def wake_up(self) -> bool:
        """Back on the GPU, before a weight sync and generation."""
        if self.can_sleep:
            self.llm.wake_up()
        return self.can_sleep

    # ------------------------------------------------------------------ weight sync
    def init_weight_sync(self, endpoint: SyncEndpoint) -> None:
        self._sync_timeout = endpoint.timeout_s
        self.llm.collective_rpc("rlhf_init_weight_sync", args=(endpoint.to_wire(),))

    def receive_weights(self, manifest: list[ParamSpec], bucket_bytes: int, version: int) -> None:
        # No RPC timeout here: the sync group's own deadlines end a stuck sync, and an RPC
        # abandoned mid-load would leave the model half-updated.
        self.llm.collective_rpc(
            "rlhf_receive_weights", args=(manifest_to_wire(manifest), bucket_bytes, version)
        )
        # Cached prefixes hold keys/values computed with the old weights.
        self.llm.reset_prefix_cache()

    def receive_adapter(
        self, manifest: list[ParamSpec], bucket_bytes: int, version: int, config: dict
    ) -> None:
        """Adapter-only sync: receive the LoRA adapter's tensors (`manifest`: PEFT file
        names), write them with `config` as a PEFT adapter folder, and load it into vLLM as
        the adapter every following generation applies. The base never moves."""
        import json
        import shutil
        import tempfile
        from pathlib import Path

        from vllm.lora.request import LoRARequest

        if self.lora_rank <= 0:
            raise RuntimeError("receive_adapter on an engine started without lora_rank")
        if self._adapter_dir is None:
            self._adapter_dir = tempfile.mkdtemp(prefix="rlhf-adapter-")
        folder = Path(self._adapter_dir) / f"v{version}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "adapter_config.json").write_text(json.dumps(config))
        self.llm.collective_rpc(
            "rlhf_receive_adapter",
            args=(manifest_to_wire(manifest), bucket_bytes, version, str(folder)),
        )
        old = self._adapter
        # ids are > 0 and unique per adapter: version v is id v + 1
        self._adapter = LoRARequest(f"policy-v{version}", version + 1, str(folder))
        self.llm.llm_engine.add_lora(self._adapter)  # loaded now, not at the next generate
        if old is not None and old.lora_int_id != self._adapter.lora_int_id:
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)
        self.llm.reset_prefix_cache()

    def close_weight_sync(self) -> None:
        if self._sync_timeout is not None and self.llm is not None:
            self.llm.collective_rpc("rlhf_close_weight_sync")
            self._sync_timeout = None

    def _part_args(self, part: str | None) -> tuple:
        if part is None:
            return ()
        if not self.is_mixture:
            raise ValueError(f"part={part!r} needs a mixture engine")
        from rlhf.engines.mixture import PARTS

        if part not in PARTS:
            raise ValueError(f"part must be one of {sorted(PARTS)}, got {part!r}")
        return (part,)

    def take_chunked_prefill_seeds(self) -> list[int]:
        """A test and debugging probe (CPU): the seeds of the seeded requests whose prefill was
        chunked, so that a step sampled them and threw the token away
        (`rlhf.engines.cpu_seeded_sampling`), since the last call."""
        return self.llm.collective_rpc("rlhf_take_chunked_prefill_seeds")[0]

    def param_checksum(self, part: str | None = None) -> float:
        """Sum of the parameters: of the whole model, or on a mixture engine of one part,
        "policy" or "reference" (a sync changes only the policy's)."""
        args = self._part_args(part)
        return self.llm.collective_rpc("rlhf_param_checksum", args=args)[0]

    def param_digest(self, part: str | None = None) -> str:
        """SHA-256 of the weights as the kernels use them (equal digests, bit-identical
        weights); `part` as in `param_checksum`. A test and debugging probe: it multiplies
        every CPU-packed linear layer by an identity matrix."""
        args = self._part_args(part)
        return self.llm.collective_rpc("rlhf_param_digest", args=args)[0]

    def shutdown(self) -> None:
        if getattr(self, "_adapter_dir", None):
            import shutil

            shutil.rmtree(self._adapter_dir, ignore_errors=True)
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
