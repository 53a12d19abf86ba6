"""The `rlhf` command. Thin: parse, load the config, hand over."""

from __future__ import annotations

import argparse
import json
import sys

from rlhf.config import Config, ConfigError, dump_config, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlhf", description="Distributed online RLHF on Ray.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("train", "run training (no arguments: the built-in default on a local Ray cluster)"),
        ("config", "print the resolved config as YAML"),
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"rlhf: {err}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(dump_config(cfg), end="")
        return 0
    if args.command == "train-rm":
        return _train_rm(cfg)
    from rlhf.train import format_summary, train

    try:
        summary = train(cfg)
    except ConfigError as err:  # found once files are read (model.path, reward.models)
        print(f"rlhf: {err}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    print(
        json.dumps({k: v for k, v in summary.items() if isinstance(v, int | float)}),
        file=sys.stderr,
    )
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
