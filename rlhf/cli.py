"""The `rlhf` command. Thin: parse, load the config, hand over."""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import sys
import tempfile

from rlhf.config import DEFAULT_TOKEN_FILE, Config, ConfigError, dump_config, load_config


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    p = argparse.ArgumentParser(prog="rlhf", description="Distributed online RLHF on Ray.")
    sub = p.add_subparsers(dest="command", required=True)
    commands = {}
    for name, help_text in (
        ("train", "run training (no arguments: the built-in default on a local Ray cluster)"),
        ("config", "print the resolved config as YAML"),
        ("eval", "win rate of a policy against a baseline under reward.judge, held-out prompts"),
        (
            "train-rm",
            "train a reward model from preference pairs (reward_model_training.*; no "
            "arguments: pairs built from the built-in task)",
        ),
    ):
        s = sub.add_parser(name, help=help_text)
        s.add_argument("--config", "-c", help="YAML config file")
        s.add_argument(
            "overrides", nargs="*", help="dotted overrides, e.g. rollout.samples_per_prompt=8"
        )
        commands[name] = s
    sv = sub.add_parser(
        "serve-reward",
        help="serve reward functions and reward models over ZeroMQ (msgpack, token auth)",
    )
    sv.add_argument(
        "--functions",
        default="",
        help="comma-separated built-in names or 'package.module:function', served by name",
    )
    sv.add_argument(
        "--models",
        default="",
        help="comma-separated NAME=FOLDER: reward models (one-label sequence classifiers, as "
        "`rlhf train-rm` makes) served under NAME",
    )
    sv.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=5555)
    sv.add_argument(
        "--token-file",
        default=DEFAULT_TOKEN_FILE,
        help="the token clients must send; made (mode 600) if missing",
    )
    sv.add_argument("--max-bytes", type=int, default=16 * 2**20, help="largest request frame")
    sv.add_argument("--timeout", type=float, default=60.0, help="seconds one call may take")
    sc = sub.add_parser("scale", help="resize a running job's rollout, reward or reference pool")
    sc.add_argument("run", help="the run's folder, or its name under runs/")
    sc.add_argument("sizes", nargs="+", help="pool=N, e.g. rollout=3 reward=2")
    commands["train"].add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a run from its newest checkpoint, with its config.yaml (overrides "
        "still apply)",
    )
    ev = commands["eval"]
    ev.add_argument("--policy", required=True, help="Hugging Face folder of the policy")
    ev.add_argument(
        "--baseline", help="Hugging Face folder to compare with (default: the initial policy)"
    )
    ev.add_argument("--greedy", action="store_true", help="greedy answers (default: sampled)")
    ev.add_argument("--samples", type=int, default=1, help="sampled answers per prompt each")
    ev.add_argument("--out", help="also write the result as JSON to this file")
    return p, commands


def parse(argv: list[str]) -> argparse.Namespace:
    """Options and overrides in any order (`train a=1 -c f.yaml b=2`): a launcher may put
    its own overrides before the user's (launch/submit_ray_job.sh)."""
    parser, commands = _parser()
    args = parser.parse_args(argv) if not argv or argv[0] not in commands else None
    if args is not None:
        return args
    args = commands[argv[0]].parse_intermixed_args(argv[1:])
    args.command = argv[0]
    return args


INTERRUPTED = (
    "rlhf: interrupted. What the run wrote is in its run folder; with run.save_every set, "
    "`rlhf train --resume <run folder>` goes on from its last checkpoint."
)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.command == "scale":
        return _scale(args)
    if args.command == "serve-reward":
        return _serve_reward(args)
    resume = getattr(args, "resume", None)
    checkpoint = None
    try:
        if resume and args.config:
            raise ConfigError("--resume uses the run's own config.yaml: give overrides only")
        if resume:
            from rlhf.run.train import resume_config

            cfg, checkpoint = resume_config(resume, args.overrides)
        else:
            cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"rlhf: {err}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(dump_config(cfg), end="")
        return 0
    if args.command == "eval":
        return _eval(cfg, args)
    if args.command == "train-rm":
        return _train_rm(cfg)
    from rlhf.run.train import format_summary, train

    try:
        summary = train(cfg, checkpoint)
    except ConfigError as err:  # found once files are read (model.path, reward.models)
        print(f"rlhf: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the workers are stopped by then (train's finally)
        print(INTERRUPTED, file=sys.stderr)
        return 130
    print(format_summary(summary))
    print(
        json.dumps({k: v for k, v in summary.items() if isinstance(v, int | float)}),
        file=sys.stderr,
    )
    return 0


def _scale(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rlhf.config import RunConfig
    from rlhf.runtime.control import ControlError, parse_sizes, request_scale

    run_dir = Path(args.run)
    if not run_dir.is_dir():
        run_dir = Path(RunConfig().output_dir) / args.run
    try:
        sizes = parse_sizes(args.sizes)
        if not run_dir.is_dir():
            raise ControlError(f"no run folder {args.run!r} (nor {run_dir})")
        request_scale(run_dir, sizes)
    except ControlError as err:
        print(f"rlhf scale: {err}", file=sys.stderr)
        return 2
    wanted = ", ".join(f"{role}={n}" for role, n in sizes.items())
    print(f"[rlhf] asked {run_dir} for {wanted}; it applies between iterations (events.jsonl)")
    return 0


def _serve_reward(args: argparse.Namespace) -> int:
    import zmq

    from rlhf.rewards.scoring import launch_dir_importable, resolve_reward_function
    from rlhf.rewards.service import RewardService, token_for_serving

    names = [n.strip() for n in args.functions.split(",") if n.strip()]
    try:
        with launch_dir_importable():
            functions = {name: resolve_reward_function(name) for name in names}
        functions.update(served_models(args.models))
        if not functions:
            raise ValueError("give --functions or --models: nothing to serve")
        service = RewardService(
            functions,
            token_for_serving(args.token_file),
            host=args.host,
            port=args.port,
            max_bytes=args.max_bytes,
            timeout_s=args.timeout,
        )
    except (ValueError, OSError, zmq.ZMQError, ConfigError) as err:  # a bad name or folder
        print(f"rlhf serve-reward: {err}", file=sys.stderr)
        return 2
    print(
        f"[rlhf] serving {', '.join(functions)} at {service.address} (token in "
        f"{args.token_file}); Ctrl-C stops",
        flush=True,
    )
    try:
        service.serve()
    except KeyboardInterrupt:
        pass
    return 0


def served_models(spec: str) -> dict[str, object]:
    """`--models a=/rm1,b=/rm2` as reward functions by name; errors name the flag."""
    from rlhf.config import RewardModelConfig
    from rlhf.rewards.reward_model_scorer import RewardModelScorer

    defaults = RewardModelConfig(path="")
    out: dict[str, object] = {}
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"--models: {item!r} is not NAME=FOLDER")
        out[name.strip()] = RewardModelScorer(
            path.strip(),
            defaults.batch_size,
            defaults.max_length,
            field=f"--models {name.strip()}",
        )
    return out


def _eval(cfg, args: argparse.Namespace) -> int:
    from pathlib import Path

    from rlhf.evaluation.winrate import evaluate_win_rate
    from rlhf.models.default_model import prepare_model
    from rlhf.run.preflight import check_before_start

    try:
        task = check_before_start(cfg)
    except ConfigError as err:
        print(f"rlhf eval: {err}", file=sys.stderr)
        return 2
    for flag in ("policy", "baseline"):
        path = getattr(args, flag)
        if path is not None and not Path(path).is_dir():
            print(f"rlhf eval: --{flag} {path!r} is not a folder", file=sys.stderr)
            return 2
        if path is not None:  # a LoRA adapter folder (final/adapter) runs merged on its base
            from rlhf.models.lora import is_adapter_folder, merge_adapter_folder

            if is_adapter_folder(path):
                merged = tempfile.mkdtemp(prefix=f"rlhf-eval-{flag}-")
                atexit.register(shutil.rmtree, merged, True)
                try:
                    setattr(args, flag, merge_adapter_folder(path, merged))
                except ValueError as err:
                    print(f"rlhf eval: --{flag}: {err}", file=sys.stderr)
                    return 2
    baseline = args.baseline or prepare_model(cfg)
    prompts = task.eval_prompts[: cfg.run.eval_prompts]
    if args.samples < 1:
        print("rlhf eval: --samples must be >= 1", file=sys.stderr)
        return 2
    result, metrics = evaluate_win_rate(
        cfg, args.policy, baseline, prompts, greedy=args.greedy, samples=args.samples
    )
    report = {"policy": args.policy, "baseline": baseline, **result.as_dict(), **metrics}
    print(
        f"[rlhf] win rate {result.win_rate:.3f} (95% CI {result.ci_low:.3f} to "
        f"{result.ci_high:.3f}; ties count 1/2) over {len(prompts)} held-out prompts x "
        f"{args.samples}: {result.wins} wins, {result.ties} ties, {result.losses} losses, "
        f"{result.no_answer} undecided; decisive win rate {result.decisive_win_rate:.3f} "
        f"({result.decisive_ci_low:.3f} to {result.decisive_ci_high:.3f}; ties left out)"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report), file=sys.stderr)
    return 0


def _train_rm(cfg: Config) -> int:
    from rlhf.rewards.pairs import PairsFileError
    from rlhf.rewards.train_rm import format_metrics, train_reward_model

    try:
        metrics = train_reward_model(cfg)
    except (ConfigError, PairsFileError) as err:
        print(f"rlhf: {err}", file=sys.stderr)
        return 2
    print(format_metrics(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
