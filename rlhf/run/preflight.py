"""Mistakes in what the user asked for, found before anything starts.

`rlhf train` runs `check_before_start` before it makes the run folder or starts Ray: an
unknown task, a model folder that is not there, a reward function that cannot be loaded, an
unusable reward-model or judge folder, an environment that cannot be loaded each raise `ConfigError` naming the field, and the CLI
exits with code 2 and that one message (docs/user_errors.md lists them, tested). Reward
functions are imported here as the reward workers will import them, relative to the
directory the user launched from.
"""

from __future__ import annotations

from rlhf.config import Config, ConfigError
from rlhf.data.lengths import PromptFit
from rlhf.data.tasks import Task
from rlhf.evaluation.plan import prompt_columns
from rlhf.rewards.scoring import launch_dir_importable, missing_columns, resolve_reward_function


def check_before_start(cfg: Config) -> Task:
    """Raise `ConfigError` for the first thing in `cfg` that cannot work; returns the run's
    prompts (read once, here)."""
    from rlhf.data.prompt_files import make_prompts
    from rlhf.models.default_model import check_model_path
    from rlhf.rewards.judges import resolve_judge_function

    if cfg.data.train is not None and cfg.model.path is None:
        raise ConfigError(
            "data.train needs model.path (a Hugging Face model folder): the tiny default "
            "model is built for a built-in task"
        )
    task = make_prompts(cfg)
    if cfg.model.path is not None:
        check_model_path(cfg.model.path)
    columns = prompt_columns(task)
    with launch_dir_importable():
        for i, fn in enumerate(cfg.reward_functions()):
            if fn.remote is not None:  # the service may be reachable from the cluster only
                from rlhf.rewards.service import read_token

                read_token(fn.token_file, f"reward.functions[{i}].token_file")
                continue
            missing = missing_columns(
                resolve_reward_function(fn.name, f"reward.functions[{i}]"), 2, columns
            )
            if missing and training_scores_rewards(cfg):
                raise ConfigError(
                    f"reward.functions[{i}]: {fn.name!r} needs the column(s) "
                    f"{', '.join(missing)}, which the prompts lack (their columns: "
                    f"{', '.join(columns) or 'none'}): add them to the prompt file, or name "
                    "reward functions that fit the data"
                )
        if cfg.rollout.tools:  # each importable, with the hints and docstring a schema needs
            from rlhf.envs.tools import schemas_of

            schemas_of(cfg.rollout.tools)
        if cfg.rollout.environment is not None:
            from rlhf.envs.base import resolve_environment

            env = resolve_environment(cfg.rollout.environment)
            reset = getattr(env, "reset", None)
            missing = missing_columns(reset, 2, columns) if isinstance(env, type) and reset else []
            if missing:  # reset(self, prompt, ...) called with **columns
                raise ConfigError(
                    f"rollout.environment: {cfg.rollout.environment!r}'s reset needs the "
                    f"column(s) {', '.join(missing)}, which the prompts lack (their columns: "
                    f"{', '.join(columns) or 'none'})"
                )
        if cfg.reward.judge.kind == "function" and cfg.reward.judge.function:
            judge = resolve_judge_function(cfg.reward.judge.function)
            missing = missing_columns(judge, 3, columns)
            if missing:
                raise ConfigError(
                    f"reward.judge.function: {cfg.reward.judge.function!r} needs the column(s) "
                    f"{', '.join(missing)}, which the prompts lack (their columns: "
                    f"{', '.join(columns) or 'none'})"
                )
    if cfg.ray.address is None:  # on a cluster the folders are the nodes' business
        from rlhf.rewards.llm_judge import judge_model_folder

        check_reward_models(cfg)
        if cfg.reward.judge.kind == "llm":
            judge_model_folder(cfg.reward.judge.llm.path)
    return task


def check_reward_models(cfg: Config) -> None:
    """On a local cluster the workers read this machine's files: a reward-model folder that
    cannot be used is reported before any actor starts, and relative paths become absolute
    (a worker's working directory is not the launcher's)."""
    from rlhf.models.reward_model import check_folder

    for i, m in enumerate(cfg.reward.models):
        m.path = str(check_folder(m.path, f"reward.models[{i}].path").resolve())


def fit_to_model(cfg: Config, task: Task, model_path: str) -> PromptFit:
    """The engines' context and the prompts that fit it (`rlhf.data.lengths.fit_prompts`),
    with prompts counted in tokens as the run will feed them."""
    from transformers import AutoTokenizer

    from rlhf.data.chat import prompt_ids
    from rlhf.data.lengths import fit_prompts
    from rlhf.envs.tools import schemas_of

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tools = schemas_of(cfg.rollout.tools)
    return fit_prompts(cfg, task, model_path, lambda p: len(prompt_ids(tokenizer, p, tools)))


def check_lora(cfg: Config, model_path: str) -> None:
    """LoRA adapters that would attach to no layer of the model are named before any actor
    starts (PEFT would raise inside the learner)."""
    if not cfg.model.lora.enabled:
        return
    from rlhf.models.lora import check_targets

    try:
        check_targets(cfg.model.lora, model_path)
    except ValueError as err:
        raise ConfigError(f"model.lora.target_modules: {err}") from None


def training_scores_rewards(cfg: Config) -> bool:
    """Whether training calls the reward functions: a policy-gradient algorithm, or a
    preference algorithm judged by the rewards (`reward.judge.kind=reward`)."""

    needs = cfg.make_algorithm().needs
    return "rewards" in needs or ("preferences" in needs and cfg.reward.judge.kind == "reward")
