"""`rlhf train`: prepare the model, start the pools, run the loop, save the policy."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from rlhf.config import Config

log = logging.getLogger(__name__)


def make_run_dir(cfg: Config) -> Path:
    """The run's folder; `run.name` is set to its name (the Ray namespace and metric tags
    use it)."""
    from rlhf.runtime.cluster import in_ray_job

    cfg.run.name = cfg.run.name or time.strftime("%Y%m%d-%H%M%S")
    run_dir = (Path(cfg.run.output_dir).expanduser() / cfg.run.name).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    if in_ray_job() and not Path(cfg.run.output_dir).expanduser().is_absolute():
        log.warning(
            "run.output_dir=%s is relative: inside a Ray job it is in the job's temporary "
            "working directory (%s); give an absolute path to keep the run",
            cfg.run.output_dir,
            run_dir,
        )
    return run_dir


def resume_config(run_dir_text: str, overrides: list[str]) -> tuple[Config, Path]:
    """The config a run folder was started with (`config.yaml`), `overrides` on top, and
    the newest complete checkpoint in it; or `ConfigError` naming what is missing."""
    from rlhf.checkpoint import latest_checkpoint
    from rlhf.config import ConfigError, load_config

    run_dir = Path(run_dir_text).expanduser().absolute()
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--resume: {run_dir_text!r} is not a run folder (no config.yaml)")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise ConfigError(
            f"--resume: {run_dir_text!r} has no complete checkpoint (run.save_every > 0 "
            "writes them)"
        )
    cfg = load_config(str(run_dir / "config.yaml"), overrides)
    cfg.run.output_dir, cfg.run.name = str(run_dir.parent), run_dir.name
    return cfg, checkpoint


def train(cfg: Config, resume_from: Path | None = None) -> dict[str, Any]:
    """A run from the start, or from the checkpoint `resume_from` (in cfg's run folder)."""
    import ray

    from rlhf.driver.trainer import Trainer
    from rlhf.models.default_model import prepare_model
    from rlhf.run.preflight import check_before_start, check_lora, fit_to_model

    started = time.perf_counter()
    task = check_before_start(cfg)  # a user's mistake stops here: no run folder, no actor
    model_path = prepare_model(cfg)
    fit = fit_to_model(cfg, task, model_path)  # ... and a length that cannot work, here
    check_lora(cfg, model_path)  # ... and adapters with no layer to attach to
    run_dir = make_run_dir(cfg)
    print(f"[rlhf] run folder: {run_dir}", flush=True)
    print(f"[rlhf] policy: {model_path}", flush=True)
    if resume_from is not None:
        print(f"[rlhf] resuming from {resume_from}", flush=True)
    trainer = Trainer(cfg, run_dir, model_path, task, resume_from, fit)
    try:
        t0 = time.perf_counter()
        trainer.start()
        print(f"[rlhf] pools ready in {time.perf_counter() - t0:.0f} s", flush=True)
        summary = trainer.run(progress=cfg.run.progress_bar)
    finally:
        trainer.close()
        if cfg.ray.address is None:
            ray.shutdown()
    summary["seconds/total"] = time.perf_counter() - started
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    if "eval/skipped" in summary:
        greedy = f"skipped ({summary['eval/skipped']})"
    else:
        greedy = "{} -> {} ({})".format(
            _number(summary["eval/greedy_reward_before"]),
            _number(summary["eval/greedy_reward_after"]),
            _number(summary["eval/greedy_rise"], "{:+.3f}"),
        )
    lines = [
        "[rlhf] done in {:.0f} s ({} iterations)".format(
            summary["seconds/total"], summary["iterations"]
        ),
        "[rlhf] mean reward, first 10% of iterations: {}; last 10%: {}; rise: {}".format(
            _number(summary["reward/first_10pct"]),
            _number(summary["reward/last_10pct"]),
            _number(summary["reward/rise"], "{:+.3f}"),
        ),
        f"[rlhf] greedy reward on held-out prompts: {greedy}",
        f"[rlhf] metrics: {summary['run_dir']}/metrics.jsonl",
    ]
    if summary.get("data/filtered_too_long"):
        lines.append(
            f"[rlhf] {summary['data/filtered_too_long']} prompts too long for "
            f"rollout.max_model_len={summary['rollout/max_model_len']} were left out"
        )
    if "final_model" in summary:
        lines.append(f"[rlhf] trained policy (Hugging Face format): {summary['final_model']}")
    return "\n".join(lines)


def _number(value: float | None, form: str = "{:.3f}") -> str:
    """A summary number, or "n/a" where there is none (no evaluation, no valid reward)."""
    return "n/a" if value is None or value != value else form.format(value)
