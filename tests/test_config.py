"""The config tree: defaults valid, YAML + dotted overrides, errors that name the field."""

import pytest

from rlhf.cli import main
from rlhf.config import Config, ConfigError, dump_config, load_config


def test_defaults_are_valid_and_round_trip(tmp_path):
    cfg = load_config()
    assert cfg == Config()
    f = tmp_path / "c.yaml"
    f.write_text(dump_config(cfg))
    assert load_config(f) == cfg


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("rollout:\n  samples_per_prompt: 4\nlearner:\n  zero_stage: 3\n")
    cfg = load_config(
        f, ["rollout.samples_per_prompt=6", "topology.rollout.workers=2", "algorithm.beta=0"]
    )
    assert cfg.rollout.samples_per_prompt == 6
    assert cfg.learner.zero_stage == 3
    assert cfg.topology.rollout.workers == 2
    assert cfg.algorithm.beta == 0.0


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "rollout.samples=3",
            r"rollout\.samples: unknown field; allowed here: .*samples_per_prompt",
        ),
        ("rollout.temperature=-1", r"rollout\.temperature: .*greater than 0 \(got -1\)"),
        ("learner.zero_stage=5", r"learner\.zero_stage: .*0, 1, 2 or 3"),
        ("bogus.x=1", r"bogus: unknown field; allowed here: algorithm, learner"),
        ("topology.learner.workers=0", r"topology\.learner\.workers must be >= 1"),
        ("rollout.samples_per_prompt=1", r"samples_per_prompt must be >= 2 for grpo"),
        ("reward.on_error=ignore", r"reward\.on_error: .*'drop', 'zero' or 'raise'"),
        ("rollout.max_new_tokens", r"must look like section\.field=value"),
        ("rollout.engine.x=1", r"rollout\.engine"),
    ],
)
def test_bad_values_name_the_field(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [override])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(f)


def test_cli_reports_config_errors_with_exit_2(capsys):
    assert main(["train", "learner.lr=-1"]) == 2
    assert "learner.lr" in capsys.readouterr().err
    assert main(["config", "run.iterations=7"]) == 0
    assert "iterations: 7" in capsys.readouterr().out


def test_shipped_configs_load():
    from pathlib import Path

    for f in sorted(Path(__file__).parent.parent.joinpath("launch", "configs").glob("*.yaml")):
        load_config(f)
