"""One typed config tree: defaults that run as they are, YAML files, dotted overrides.

    cfg = load_config("launch/configs/grpo_addition.yaml", ["rollout.samples_per_prompt=8"])

Every error names the field and says what is allowed (see `ConfigError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from rlhf.algorithms import ALGORITHMS, Algorithm, AlgorithmConfig
from rlhf.algorithms.base import stage_table, started_pools
from rlhf.algorithms.grpo import GRPOConfig
from rlhf.configbase import ConfigError, Section
from rlhf.models.dtypes import DtypeChoice
from rlhf.models.families import Family
from rlhf.rewards.judges import JudgeConfig

__all__ = ["Config", "ConfigError", "Section", "load_config", "build_config", "dump_config"]


# ---------------------------------------------------------------- topology: read it in one block
class PoolConfig(Section):
    workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        1,
        description="Ray actors in this pool; 'auto' (the learner only): chosen from the model "
        "and the machine when the run starts (rlhf.runtime.learner_ranks)",
    )
    num_cpus: float = Field(1.0, ge=0, description="Ray CPUs reserved per actor")
    num_gpus: float = Field(0.0, ge=0, description="Ray GPUs reserved per actor")
    colocated: bool = Field(
        False,
        description="share the machine with the other colocated pools: they take turns within "
        "an iteration and each computes on all of its cores (topology.colocated_threads) in its "
        "turn; False: compute on this pool's own reservation (num_cpus), at the same time as "
        "other pools",
    )
    placement: Literal["pack", "spread", "strict_pack", "strict_spread", "none"] = Field(
        "pack",
        description="the pool's Ray placement group: pack its workers onto as few nodes as "
        "possible, or spread them over nodes (strict: or fail); none: no placement group",
    )
    resources: dict[str, Annotated[float, Field(gt=0)]] = Field(
        {},
        description="custom Ray resources each worker needs, e.g. {rollout_node: 1}: the pool "
        "runs only on nodes that offer them (ray start --resources)",
    )


POOLS = ("rollout", "learner", "reference", "reward", "critic")


class TopologyConfig(Section):
    # Two of each, taking turns on the cores: the fastest shape measured on the embedded
    # default (benchmarks/results/speed_modes.md), as processes beat threads on small matrices.
    # The learner's rank count follows the model: two ranks on CPU for small models, one for
    # big ones, where two are no faster and hold two copies (rlhf.runtime.learner_ranks).
    rollout: PoolConfig = PoolConfig(workers=2)
    learner: PoolConfig = PoolConfig(workers="auto")
    reference: PoolConfig = PoolConfig(workers=1, num_cpus=0.5)
    reward: PoolConfig = PoolConfig(workers=1, num_cpus=0.5)
    critic: PoolConfig = Field(
        PoolConfig(workers=1), description="value-model ranks; started only by ppo"
    )
    colocate_all: bool | None = Field(
        None,
        description="every pool colocated (their own flags then ignored); None: colocated "
        "when generation is synchronous (rollout.max_staleness = 0), which measured fastest on "
        "the embedded default, and not otherwise",
    )
    colocated_threads: int | None = Field(
        None,
        ge=1,
        description="cores a colocated pool computes with in its turn, split over its actors; "
        "None: every core the process may run on",
    )

    @model_validator(mode="before")
    @classmethod
    def _pool_defaults(cls, data: Any) -> Any:
        """`topology.rollout.num_cpus=2` changes that field only: a pool given in part keeps
        this topology's defaults for the rest (workers=2, not PoolConfig's 1)."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for pool in POOLS:
            given = out.get(pool)
            if isinstance(given, dict):
                default = cls.model_fields[pool].default.model_dump()
                out[pool] = {**default, **given}
        return out

    @model_validator(mode="after")
    def _at_least_one(self) -> TopologyConfig:
        for pool in POOLS:
            if pool != "learner" and getattr(self, pool).workers == "auto":
                raise ValueError(
                    f"topology.{pool}.workers: 'auto' is for topology.learner only; give a number"
                )
        for pool in ("rollout", "learner", "reward"):
            workers = getattr(self, pool).workers
            if workers != "auto" and workers < 1:
                raise ValueError(f"topology.{pool}.workers must be >= 1")
        return self


class RayConfig(Section):
    address: str | None = Field(None, description="None starts a local cluster; 'auto' joins one")
    num_cpus: int | None = Field(
        None,
        description="local cluster only; default: 4x what the topology reserves at start "
        "(room for `rlhf scale` and replacements), at least the machine's cores",
    )
    include_dashboard: bool | None = Field(
        None,
        description="local cluster only; None: on when Ray's dashboard packages are installed",
    )
    namespace: str | None = Field(
        None, description="Ray namespace of the run's actors; None: rlhf-<run name>"
    )


# ---------------------------------------------------------------- model, task, warm start
class TinyModelConfig(Section):
    family: Family = Field(
        "llama", description="architecture of the tiny default (rlhf.models.families)"
    )
    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(4, gt=0)
    num_kv_heads: int = Field(2, gt=0)
    intermediate_size: int = Field(512, gt=0)
    vocab_size: int = Field(512, ge=64, description="the byte-level BPE's vocabulary")
    max_position_embeddings: int = Field(
        256, gt=0, description="the longest prompt + completion the model takes"
    )
    seed: int = 0


class LoraConfig(Section):
    """Low-rank adapters (PEFT) on the learner's policy: only they train; the engines get the
    merged policy (docs/lora.md)."""

    rank: int = Field(0, ge=0, description="the adapters' rank; 0: no LoRA (full fine-tuning)")
    alpha: float = Field(16.0, gt=0, description="scaling numerator: updates scale by alpha/rank")
    dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="dropout on the adapters' input; above 0 the learner's log-probs of a "
        "sample are noisy and no longer equal the sampler's",
    )
    target_modules: str | list[str] = Field(
        "all-linear",
        description="the layers that get adapters: PEFT's 'all-linear' (every linear layer "
        "but the output head) or a list of module names (e.g. [q_proj, v_proj])",
    )

    @property
    def enabled(self) -> bool:
        return self.rank > 0


class ModelConfig(Section):
    path: str | None = Field(None, description="HF model folder; None builds the tiny default")
    tiny: TinyModelConfig = TinyModelConfig()
    dtype: DtypeChoice = Field(
        "auto",
        description="every pool's dtype unless its own `dtype` says otherwise; auto: bfloat16 "
        "on a GPU that has it, float32 elsewhere (CPU)",
    )
    cache_dir: str = Field("~/.cache/rlhf", description="where built tiny models are kept")
    lora: LoraConfig = LoraConfig()


class TaskConfig(Section):
    name: str = Field("addition", description="a built-in task (rlhf.data.tasks.TASKS)")
    max_operand: int = Field(99, gt=0, description="addition: the largest operand")
    num_prompts: int = Field(4096, gt=0, description="training prompts")
    seed: int = 0


class DataConfig(Section):
    """Prompts from a file instead of the built-in task (`task.*` then only names the
    default model's task)."""

    train: str | None = Field(
        None,
        description="JSONL, Parquet or CSV file, or a folder saved by datasets' "
        "save_to_disk; None: the built-in task",
    )
    eval: str | None = Field(None, description="held-out prompts; None: a part of train")
    eval_fraction: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="with eval None: this fraction of train is held out (at least one row); "
        "0: none, and the run has no greedy held-out evaluation",
    )
    prompt_key: str = Field(
        "prompt",
        description="the column holding the prompt: a string, or a list of chat messages "
        "({role, content}); every other column reaches reward functions by name",
    )
    chat_template: Literal["auto", "always", "never"] = Field(
        "auto",
        description="auto: message lists go through the tokenizer's chat template (with the "
        "generation prompt), strings stay as they are; always: strings too, as one user "
        "message; never: strings only",
    )


class WarmStartConfig(Section):
    """A short supervised warm start on the task, so RL starts from a policy with signal."""

    enabled: bool = True
    steps: int = Field(400, ge=0)
    schedule_steps: int | None = Field(
        None,
        gt=0,
        description="the lr schedule's length (warm-up, then cosine decay to 0); None: steps. "
        "More than steps stops part-way down the decay: a model still learning, which leaves "
        "RL more to do",
    )
    batch_size: int = Field(128, gt=0)
    lr: float = Field(1e-3, gt=0)
    autocast: Literal["off", "bfloat16", "auto"] = Field(
        "off",
        description="bfloat16 matmuls (fp32 weights and optimizer): 1.6x faster a step on CPUs "
        "with AVX512-BF16 or AMX, about 2x slower on CPUs without; auto: bfloat16 where the "
        "CPU has it",
    )

    @model_validator(mode="after")
    def _schedule_covers_steps(self) -> WarmStartConfig:
        if self.schedule_steps is not None and self.schedule_steps < self.steps:
            raise ValueError(
                f"warm_start.schedule_steps ({self.schedule_steps}) is less than "
                f"warm_start.steps ({self.steps}): the schedule must last the whole warm start"
            )
        return self


# ---------------------------------------------------------------- pools
# Where `rlhf serve-reward` keeps the token it makes, and remote reward functions look for it.
DEFAULT_TOKEN_FILE = "~/.cache/rlhf/reward-service.token"


def _pool_dtype() -> Any:
    return Field(None, description="this pool's dtype; None: model.dtype")


class RolloutConfig(Section):
    engine: Literal["vllm", "hf"] = "vllm"
    dtype: DtypeChoice | None = _pool_dtype()
    prompts_per_iteration: int = Field(64, gt=0)
    samples_per_prompt: int | None = Field(
        None,
        gt=0,
        description="samples of each prompt; None: the algorithm's (8; 2 where it fixes the "
        "shape: nash_md, ipo_md with mixture_samples 'one')",
    )
    max_new_tokens: int = Field(4, gt=0)
    ignore_eos: bool = Field(
        False,
        description="sampling only: EOS does not stop a completion, so every one is "
        "max_new_tokens long (benchmarks of generation-heavy work); greedy evaluation still "
        "stops at EOS",
    )
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 disables top-k")
    max_model_len: int | None = Field(
        None,
        gt=0,
        description="the engines' context, prompt + completion tokens; None: the longest "
        "prompt plus max_new_tokens, within the model's positions (prompts with no room for "
        "max_new_tokens are left out and counted: data/filtered_too_long)",
    )
    kv_cache_bytes: int = Field(256 * 2**20, gt=0, description="vLLM KV cache per engine (CPU)")
    gpu_memory_utilization: float = Field(0.4, gt=0, le=1)
    enforce_eager: bool = True
    max_staleness: int = Field(
        0,
        ge=0,
        description="0: generate each batch with the weights being trained (synchronous); k: "
        "generation runs up to k batches ahead while the learner trains, and no sample is "
        "trained on more than k policy versions after the weights that generated it",
    )
    prompts_per_call: int | None = Field(
        None,
        gt=0,
        description="prompts (whole groups) per generate call handed to a free rollout "
        "worker; None: a batch's prompts split evenly, one call per worker",
    )
    stop: list[str] = Field(
        [],
        description="strings that end a completion (with an environment: a policy turn) on "
        "the token that completes one, which the completion keeps; an environment's own "
        "`stop` attribute adds to them",
    )
    # Multi-turn episodes (rlhf/envs, docs/environments.md)
    environment: str | None = Field(
        None,
        description="multi-turn episodes: a built-in ('calculator') or 'package.module:Class' "
        "with reset(prompt, **columns) and step(text) -> rlhf.envs.Step, one instance per "
        "episode; None: one completion per sample",
    )
    tools: list[str] = Field(
        [],
        description="tools as plain Python functions ('package.module:function', with type "
        "hints and a docstring): episodes in the built-in tool environment, calls in the "
        "<tool_call> tag protocol (docs/environments.md); the reward functions score the "
        "final answer",
    )
    max_turns: int = Field(4, gt=0, description="with an environment: policy turns per episode")
    max_episode_tokens: int | None = Field(
        None,
        gt=0,
        description="with an environment: policy and observation tokens after the prompt; "
        "None: max_new_tokens x max_turns (max_new_tokens is then one turn's)",
    )
    max_observation_tokens: int = Field(
        256, gt=0, description="with an environment: one observation's tokens; longer ones are cut"
    )
    env_timeout_s: float = Field(
        30.0,
        gt=0,
        description="with an environment: the limit for one reset or step; past it the "
        "episode ends with reward.on_error's outcome",
    )
    turn_rewards: Literal["sum", "last", "discounted", "per_turn"] = Field(
        "sum",
        description="with an environment: an episode's reward from its turns' rewards: their "
        "sum, the last, sum of turn_discount^k r_k, or per_turn (PPO, REINFORCE++: each turn's "
        "reward on its last token, discounted by their own gamma; other algorithms: the sum)",
    )
    turn_discount: float = Field(
        1.0, gt=0, le=1, description="turn_rewards=discounted: a turn's reward is worth this^k"
    )

    def runs_episodes(self) -> bool:
        """Whether samples are multi-turn episodes: an environment, or tools."""
        return self.environment is not None or bool(self.tools)

    def completion_tokens(self) -> int:
        """The most tokens a sample holds after its prompt: one completion, or a whole
        episode (policy and observation tokens) with an environment."""
        if not self.runs_episodes():
            return self.max_new_tokens
        return self.max_episode_tokens or self.max_new_tokens * self.max_turns


class RewardFunctionConfig(Section):
    name: str = Field(
        ...,
        description="a built-in reward or 'package.module:function'; with `remote`, the name "
        "the service serves it under",
    )
    weight: float = 1.0
    remote: str | None = Field(
        None, description="tcp://host:port of an `rlhf serve-reward` service that runs `name`"
    )
    token_file: str = Field(
        DEFAULT_TOKEN_FILE, description="remote: the file holding the service's token"
    )
    timeout_s: float = Field(60.0, gt=0, description="remote: limit for one call")


class RewardModelConfig(Section):
    """A sequence-classification folder with one label (`rlhf train-rm` makes one), scoring
    prompt + completion; its score joins the functions' weighted sum."""

    path: str = Field(..., description="the reward model's Hugging Face folder")
    weight: float = 1.0
    batch_size: int = Field(64, gt=0, description="rows per forward pass")
    max_length: int = Field(256, gt=0, description="tokens per row; longer rows keep the end")


DEFAULT_REWARD_FUNCTION = "addition_exact"  # the built-in task's


class RewardConfig(Section):
    functions: list[RewardFunctionConfig] | None = Field(
        None,
        description="reward functions, summed with their weights; None: "
        f"{DEFAULT_REWARD_FUNCTION} (the default task's), or with rollout.environment none "
        "(the environment's rewards alone)",
    )
    models: list[RewardModelConfig] = Field(
        [], description="reward models, scored alongside `functions` (weighted sum)"
    )
    on_error: Literal["drop", "zero", "raise"] = Field(
        "drop",
        description="a function that raises or returns NaN: drop the sample, score 0, or stop",
    )
    judge: JudgeConfig = Field(
        JudgeConfig(), description="pairwise judge of the preference algorithms and `rlhf eval`"
    )


VLLM_MAX_LORA_RANK = 512  # vLLM's largest max_lora_rank (rlhf.engines.vllm_engine's list)
FULL_FINE_TUNING_LR = 1e-4
# adapters start at zero and span a few directions: they need a larger step (docs/lora.md:
# 2e-3 beat 5e-4 and 1e-3 on the default task)
LORA_LR = 2e-3


class LearnerConfig(Section):
    lr: float | None = Field(
        None,
        gt=0,
        description=f"None: {FULL_FINE_TUNING_LR:g}, or {LORA_LR:g} for the policy's LoRA "
        "adapters (model.lora.rank > 0)",
    )
    warmup_iterations: int = Field(10, ge=0, description="linear lr warm-up")
    lr_decay: Literal["constant", "linear", "cosine"] = Field(
        "cosine", description="after warm-up, to min_lr_ratio * lr at the last iteration"
    )
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    zero_stage: Literal[0, 1, 2, 3] = 2
    micro_batch_size: int = Field(
        256,
        gt=0,
        description="rows per forward/backward (256: fastest measured on the embedded default, "
        "benchmarks/results/speed_modes.md)",
    )
    max_tokens_per_micro_batch: int | None = Field(
        16384,
        gt=0,
        description="token slots per forward/backward: a micro-batch's rows x its longest row "
        "(right padding past it is not computed); units stay whole, so a unit over the budget "
        "is a micro-batch of its own; micro_batch_size still caps the rows. 16384 (veRL's "
        "default per GPU) leaves short rows to micro_batch_size and keeps long rows (hundreds "
        "to thousands of tokens) from running out of memory; None: rows alone",
    )
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    gradient_checkpointing: bool = False
    dtype: DtypeChoice | None = Field(
        None,
        description="this pool's dtype (DeepSpeed's bf16/fp16 mixed precision, fp32 master "
        "weights); None: model.dtype",
    )


class ReferenceConfig(Section):
    """The reference pool (frozen initial policy; placed by topology.reference). Its
    forward passes use the learner's limits, learner.micro_batch_size and
    learner.max_tokens_per_micro_batch (rows longest first; a unit may be split there)."""

    dtype: DtypeChoice | None = _pool_dtype()
    separate_pool: bool = Field(
        False,
        description="with LoRA (model.lora.rank > 0) the learner's base weights, adapters off, "
        "give the reference log-probs and no reference pool starts; true: a pool of its own "
        "anyway (without LoRA there always is one)",
    )


class CriticConfig(LearnerConfig):
    """The critic's DeepSpeed ranks (ppo): same knobs as the learner's, plus where it starts."""

    init_from: str | None = Field(
        None,
        description="None: the policy's backbone with a fresh value head; or a reward-model "
        "folder (its score head is used when it has one)",
    )


class RewardModelTrainingConfig(LearnerConfig):
    """`rlhf train-rm`: a reward model from preference pairs, trained by DeepSpeed on one
    rank with the learner's optimizer knobs (below: steps where the learner says iterations)."""

    pairs: str | None = Field(
        None,
        description="JSONL of {prompt, chosen, rejected}; None builds pairs from the task",
    )
    output_dir: str = Field("runs/reward_model", description="where the model is saved")
    init_from: str | None = Field(
        None,
        description="None: the policy `rlhf train` starts from (model.*, warm_start.*) with a "
        "fresh score head; or a policy or reward-model folder",
    )
    backbone_warm_start_steps: int | None = Field(
        3000,
        ge=0,
        description="with init_from None: the default model warm-started this many supervised "
        "steps (warm_start.* otherwise), so the reward model can judge the policy's mistakes "
        "better than the policy makes them; None: exactly the policy `rlhf train` starts from",
    )
    extra_layers: int = Field(
        2,
        ge=0,
        description="decoder layers added on top of a policy backbone, starting as the "
        "identity: room to check an answer after the layers that form it",
    )
    steps: int = Field(4000, gt=0, description="optimizer steps")
    batch_size: int = Field(64, gt=0, description="pairs per optimizer step")
    micro_batch_size: int = Field(64, gt=0, description="pairs per forward/backward")
    max_tokens_per_micro_batch: int | None = Field(
        None,
        gt=0,
        description="token slots per forward/backward: 2 x pairs x the longest row (a pair "
        "over the budget is a micro-batch of its own); None: micro_batch_size alone",
    )
    lr: float = Field(3e-4, gt=0)
    warmup_iterations: int = Field(20, ge=0, description="linear lr warm-up, in steps")
    held_out_fraction: float = Field(
        0.1, ge=0, lt=1, description="pairs file: the fraction of prompts held out"
    )
    rejected_per_prompt: int = Field(
        8, gt=0, description="built-in pairs: wrong answers per training prompt"
    )
    policy_samples: int = Field(
        0,
        ge=0,
        description="built-in pairs: also sample this many answers per training prompt from "
        "the policy `rlhf train` starts from (temperature 1); its wrong ones become rejected "
        "answers of kind policy_sample, and its mistakes on held-out prompts are measured",
    )
    max_length: int = Field(256, gt=0, description="tokens per row; longer rows keep the end")
    seed: int = 0


class SyncConfig(Section):
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    bucket_bytes: int = Field(
        16 * 2**20,
        ge=0,
        description="0 = one broadcast per tensor; 16 MiB measured best on CPU (benchmarks/results/sync_bucketing.md)",
    )
    timeout_s: float = Field(120.0, gt=0)
    lora: Literal["auto", "adapter", "merged"] = Field(
        "auto",
        description="with LoRA (model.lora.rank > 0): 'adapter' sends only the adapter, which "
        "vLLM applies to the base it loaded at start; 'merged' sends the merged weights (every "
        "engine and model takes them); auto: adapter on plain vLLM engines on GPUs, merged on "
        "CPU (vLLM's CPU LoRA kernels made generation 2.5x slower, docs/lora.md) and where an "
        "engine cannot take an adapter (the HF engine, the IPO-MD/Nash-MD mixture engine)",
    )


class ElasticConfig(Section):
    """What happens when a rollout, reward or reference worker dies: its unfinished work goes
    back to the queue and a replacement starts (after a back-off), up to a budget per pool."""

    max_restarts: int = Field(
        10,
        ge=0,
        description="replacements per pool for workers that die; one more death stops the run",
    )
    restart_backoff_s: float = Field(
        1.0,
        ge=0,
        description="wait before a replacement starts; doubles for each replacement "
        "that dies before it served a call (a crash loop), up to max_backoff_s",
    )
    max_backoff_s: float = Field(60.0, ge=0)


class RunConfig(Section):
    iterations: int = Field(300, gt=0)
    seed: int = 0
    output_dir: str = "runs"
    name: str | None = Field(None, description="run folder name; default: a timestamp")
    call_timeout_s: float = Field(600.0, gt=0, description="limit for any one remote call")
    eval_every: int = Field(0, ge=0, description="greedy accuracy on held-out prompts; 0 = off")
    eval_prompts: int = Field(512, gt=0, description="held-out prompts per evaluation (at most)")
    progress_bar: bool = True
    record_batches: bool = Field(
        False,
        description="write batches.jsonl: each iteration's prompts, their sample counts, "
        "workers and weights versions (an audit trail of what was trained on)",
    )
    save_model: bool = True
    save_every: int = Field(
        0,
        ge=0,
        description="a checkpoint (DeepSpeed state, RNG, run state, an HF export) in "
        "<run>/checkpoints every this many iterations, for `rlhf train --resume`; 0 = never",
    )
    keep_checkpoints: int = Field(
        2, ge=0, description="the newest this many checkpoints are kept; 0 = all"
    )
    tensorboard: bool = Field(True, description="TensorBoard event files in <run>/tensorboard")
    samples_every: int = Field(
        10,
        ge=0,
        description="TensorBoard: a few sampled completions with their rewards as text every "
        "this many iterations; 0 = never",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "WARNING",
        description="Ray's, vLLM's and the workers' loggers; worker output goes to "
        "<run>/logs/<worker>.log (and Ray's dashboard) at any level",
    )
    worker_logs_to_console: bool = Field(
        False, description="also print every worker's output on the console (Ray's way)"
    )


class Config(Section):
    run: RunConfig = RunConfig()
    ray: RayConfig = RayConfig()
    topology: TopologyConfig = TopologyConfig()
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    data: DataConfig = DataConfig()
    warm_start: WarmStartConfig = WarmStartConfig()
    rollout: RolloutConfig = RolloutConfig()
    reference: ReferenceConfig = ReferenceConfig()
    reward: RewardConfig = RewardConfig()
    algorithm: AlgorithmConfig = GRPOConfig()
    learner: LearnerConfig = LearnerConfig()
    critic: CriticConfig = CriticConfig()
    sync: SyncConfig = SyncConfig()
    elastic: ElasticConfig = ElasticConfig()
    reward_model_training: RewardModelTrainingConfig = RewardModelTrainingConfig()

    @model_validator(mode="before")
    @classmethod
    def _default_algorithm_name(cls, data: Any) -> Any:
        # `algorithm.beta=0` alone tunes the default algorithm: the union needs its tag.
        algo = data.get("algorithm") if isinstance(data, dict) else None
        if isinstance(algo, dict) and "name" not in algo:
            data = {**data, "algorithm": {"name": GRPOConfig.model_fields["name"].default, **algo}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        self.algorithm.check(self)
        needs = self.make_algorithm().needs
        if (
            "reference" in started_pools(needs, self.stage_table())
            and self.topology.reference.workers < 1
        ):
            raise ValueError(
                f"topology.reference.workers must be >= 1: {self.algorithm.name} with "
                f"beta={self.algorithm.beta} uses the reference model"
            )
        self._check_overlap()
        self._check_scoring()
        if self.sync.lora == "adapter" and self.model.lora.enabled and not self.sends_adapter():
            raise ValueError(
                "sync.lora='adapter' needs plain vLLM engines (rollout.engine=vllm, not a "
                "mixture algorithm): set sync.lora=merged or auto"
            )
        if self.sends_adapter() and self.model.lora.rank > VLLM_MAX_LORA_RANK:
            raise ValueError(
                f"model.lora.rank={self.model.lora.rank} exceeds vLLM's largest LoRA rank "
                f"({VLLM_MAX_LORA_RANK}) for adapter-only syncs: set sync.lora=merged"
            )
        n = self.samples_per_prompt()
        for section in ("learner", "critic"):
            if getattr(self, section).micro_batch_size < n:
                raise ValueError(
                    f"{section}.micro_batch_size ({getattr(self, section).micro_batch_size}) must "
                    f"be >= rollout.samples_per_prompt ({n}): a prompt's samples stay in one "
                    "micro-batch"
                )
        return self

    def _check_overlap(self) -> None:
        """Asynchronous generation runs the rollout pool beside every other pool, so none
        may take all the cores in its turn."""
        k = self.rollout.max_staleness
        colocated = self.colocated_pools()
        if k > 0 and colocated:
            raise ValueError(
                f"rollout.max_staleness={k} generates while the other pools work, so no pool can "
                f"take turns on shared cores: set topology.{{{', '.join(colocated)}}}.colocated "
                "to false, or rollout.max_staleness to 0"
            )

    def _check_scoring(self) -> None:
        """Something scores the samples; an environment's episodes go to the algorithms
        that learn from rewards."""
        r = self.rollout
        if not self.reward_functions() and not self.reward.models and r.environment is None:
            raise ValueError("reward.functions and reward.models are both empty: give at least one")
        if not r.runs_episodes():
            return
        if r.environment is not None and r.tools:
            raise ValueError(
                "rollout.tools run in the built-in tool environment: with rollout.environment "
                f"({r.environment!r}) set, call the tools from its step() instead"
            )
        algorithm = self.make_algorithm()
        if "preferences" in algorithm.needs or algorithm.sampling_mixture is not None:
            field = "rollout.environment" if r.environment is not None else "rollout.tools"
            raise ValueError(
                f"{field} (multi-turn episodes) runs with the algorithms that learn from "
                f"rewards (grpo, rloo, reinforce_pp, ppo), not {self.algorithm.name}"
            )
        if self.rollout.turn_rewards == "per_turn" and getattr(
            self.algorithm, "whiten_rewards", False
        ):
            raise ValueError(
                "algorithm.whiten_rewards scales whole-sequence rewards: it cannot be used "
                "with rollout.turn_rewards=per_turn (rewards on each turn's last token)"
            )

    # Resolved choices: methods, so the fields keep what the user wrote (config.yaml records
    # it, and a resume with an override is a fresh validation of it).
    def sends_adapter(self) -> bool:
        """Whether weight syncs carry only the LoRA adapter (`sync.lora`)."""
        if not self.model.lora.enabled or self.sync.lora == "merged":
            return False
        can = self.rollout.engine == "vllm" and self.make_algorithm().sampling_mixture is None
        if self.sync.lora == "auto":  # on CPU the merged weights generate faster (measured)
            return can and self.topology.rollout.num_gpus > 0
        return can

    def reference_from_base(self) -> bool:
        """LoRA's reference for free: the learner's model with its adapters switched off is
        the starting policy, so no reference pool is needed (unless one is asked for)."""
        return self.model.lora.enabled and not self.reference.separate_pool

    def stage_table(self) -> dict[str, str]:
        """Which pool fills each stage column in this run (`rlhf.algorithms.base.stage_table`)."""
        return stage_table(self.reference_from_base())

    def learning_rate(self, role: str) -> float:
        """The lr of a DeepSpeed pool ("learner" | "critic"): as set, or the default for what
        it trains (LoRA adapters take a larger one)."""
        lr = getattr(self, role).lr
        if lr is not None:
            return lr
        return LORA_LR if role == "learner" and self.model.lora.enabled else FULL_FINE_TUNING_LR

    def is_colocated(self, pool: str) -> bool:
        """Whether `pool` takes turns on the cores it shares with the other colocated pools:
        its own flag, or `topology.colocate_all` (unset: when generation is synchronous)."""
        every = self.topology.colocate_all
        if every is None:
            every = self.rollout.max_staleness == 0
        return every or getattr(self.topology, pool).colocated

    def colocated_pools(self) -> list[str]:
        return [p for p in POOLS if self.is_colocated(p)]

    def reward_functions(self) -> list[RewardFunctionConfig]:
        """`reward.functions`, or unset, the default task's reward (none with an environment:
        its rewards score the episodes)."""
        if self.reward.functions is not None:
            return self.reward.functions
        if self.rollout.environment is not None:
            return []
        return [RewardFunctionConfig(name=DEFAULT_REWARD_FUNCTION)]

    def samples_per_prompt(self) -> int:
        """`rollout.samples_per_prompt`, or unset, the shape the algorithm fixes (nash_md:
        one sample from the policy, one from the mixture) or 8."""
        if self.rollout.samples_per_prompt is not None:
            return self.rollout.samples_per_prompt
        return getattr(self.algorithm, "fixed_samples_per_prompt", None) or SAMPLES_PER_PROMPT

    def make_algorithm(self) -> Algorithm:
        """This config's algorithm, its unset choices resolved: the off-policy correction's
        cap (unset: on for samples of an older policy, rollout.max_staleness > 0)."""
        block = self.algorithm
        if getattr(block, "importance_sampling_cap", 0.0) is None:
            cap = STALE_IMPORTANCE_CAP if self.rollout.max_staleness > 0 else 0.0
            block = block.model_copy(update={"importance_sampling_cap": cap})
        return ALGORITHMS[block.name](block, self.rollout.completion_tokens())


# Samples of each prompt when neither the user nor the algorithm says: a group large enough
# for group-relative advantages and best-vs-worst pairs, small enough for the CPU default.
SAMPLES_PER_PROMPT = 8

# The truncated importance weight's cap for samples of an older policy (asynchronous
# generation): weights above 2 come from tokens the learner now finds far likelier than the
# sampler did, whose variance would dominate the step.
STALE_IMPORTANCE_CAP = 2.0


# ---------------------------------------------------------------- loading
def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.field=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no field name")
    try:
        return key, yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(
            f"override {text!r}: the value is not valid YAML: {_yaml_problem(err)}"
        ) from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line: what and where."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem}{where}"


def _algorithm_configs() -> dict[str, type[Section]]:
    """Each algorithm's config class by its `name` tag (the members of AlgorithmConfig)."""
    from typing import get_args

    union = get_args(AlgorithmConfig)[0]
    return {cls.model_fields["name"].default: cls for cls in get_args(union)}


def _walk(loc: tuple[Any, ...]) -> tuple[Any, list[str]]:
    """The section a location points into, and the dotted path a user writes (pydantic puts
    the union's tag into locations inside `algorithm`: 'algorithm.ppo.lam' -> 'algorithm.lam')."""
    model: Any = Config
    shown: list[str] = []
    for part in loc:
        if model is AlgorithmConfig:
            tagged = _algorithm_configs().get(part)
            if tagged is not None:
                model = tagged
                continue
        shown.append(str(part))
        field = getattr(model, "model_fields", {}).get(part)
        model = None if field is None else field.annotation
        if model is not None and part == "algorithm":
            model = AlgorithmConfig
    return model, shown


def _allowed_fields(loc: tuple[Any, ...]) -> list[str] | None:
    model, _ = _walk(loc[:-1])
    fields = getattr(model, "model_fields", None)
    return sorted(fields) if fields else None


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        where = ".".join(_walk(loc)[1]) or "(top level)"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_fields(loc)
            hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
            lines.append(f"  {where}: unknown field{hint}")
        elif not loc:  # a check across sections: its message names the fields itself
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        else:
            given = e.get("input")
            shown = "" if isinstance(given, dict) else f" (got {given!r})"
            lines.append(f"  {where}: {e['msg']}{shown}")
    return "invalid config:\n" + "\n".join(lines)


def build_config(tree: dict[str, Any] | None = None) -> Config:
    try:
        return Config.model_validate(tree or {})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(
                f"config file {str(p)!r} is not valid YAML: {_yaml_problem(err)}"
            ) from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections")
        tree = loaded
    for text in overrides or []:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    return build_config(tree)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
