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
        (
            "bogus.x=1",
            r"bogus: unknown field; allowed here: algorithm, critic, data, elastic, learner",
        ),
        ("topology.learner.workers=0", r"topology\.learner\.workers must be >= 1"),
        ("rollout.samples_per_prompt=1", r"samples_per_prompt must be >= 2 for grpo"),
        ("reward.on_error=ignore", r"reward\.on_error: .*'drop', 'zero' or 'raise'"),
        ("rollout.max_new_tokens", r"must look like section\.field=value"),
        ("rollout.engine.x=1", r"rollout\.engine"),
        ("algorithm.lam=0.9", r"algorithm\.lam: unknown field; allowed here: .*scale_rewards"),
        ("algorithm.name=dpo", r"algorithm: .*'dpo'.*'grpo', 'ppo', 'rloo', 'reinforce_pp'"),
        ("learner.micro_batch_size=4", r"learner\.micro_batch_size \(4\) must be >= rollout"),
        (
            "critic.max_tokens_per_micro_batch=0",
            r"critic\.max_tokens_per_micro_batch: .*greater than 0 \(got 0\)",
        ),
        ("algorithm.beta=0.1 algorithm.kl_estimator=k1", r"algorithm\.kl_estimator: k1 as a loss"),
        ("algorithm.kl_in_reward=true", r"algorithm\.kl_in_reward: grpo puts the KL in the loss"),
        (
            "algorithm.name=reinforce_pp algorithm.kl_in_reward=false",
            r"algorithm\.kl_in_reward: reinforce_pp puts the KL in the reward",
        ),
        (
            "algorithm.name=rloo algorithm.beta=0.1 algorithm.kl_in_reward=false",
            r"algorithm\.kl_estimator: k1 as a loss",
        ),
        ("algorithm.name=ppo algorithm.beta=-1", r"algorithm\.beta: .*greater than or equal to 0"),
    ],
)
def test_bad_values_name_the_field(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, override.split())


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


def test_an_interrupted_train_says_so_in_one_line_with_exit_130(capsys, monkeypatch):
    """Ctrl-C during `rlhf train` (KeyboardInterrupt out of the run, after its workers were
    stopped): one line on stderr, the shell's exit code for SIGINT, no traceback. (By hand, a
    SIGINT to a default run ended it in ~4 s.)"""
    import rlhf.run.train

    def interrupted(*_: object) -> dict:
        raise KeyboardInterrupt

    monkeypatch.setattr(rlhf.run.train, "train", interrupted)
    assert main(["train", "run.iterations=3"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("rlhf: interrupted.") and err.count("\n") == 1, err


def test_algorithm_blocks_are_chosen_by_name():
    cfg = load_config(None, ["algorithm.name=ppo", "algorithm.lam=0.9"])
    assert cfg.algorithm.name == "ppo" and cfg.algorithm.lam == 0.9
    cfg = load_config(None, ["algorithm.scale_rewards=false"])  # the earlier boolean form
    assert cfg.algorithm.name == "grpo" and cfg.algorithm.scale_rewards == "none"
    with pytest.raises(ConfigError, match=r"algorithm\.scale_rewards: unknown field.*\blam\b"):
        load_config(None, ["algorithm.name=ppo", "algorithm.scale_rewards=none"])
    with pytest.raises(ConfigError, match=r"topology\.critic\.workers must be >= 1 for ppo"):
        load_config(None, ["algorithm.name=ppo", "topology.critic.workers=0"])
    with pytest.raises(ConfigError, match=r"topology\.reference\.workers must be >= 1: grpo"):
        load_config(None, ["topology.reference.workers=0", "algorithm.beta=0.04"])
    assert load_config(None, ["topology.reference.workers=0"])  # the default beta is 0


def test_every_registered_algorithm_is_chosen_by_its_name_with_its_own_defaults():
    from rlhf.algorithms import REGISTERED

    for cls in REGISTERED:  # each with every other setting default
        cfg = load_config(None, [f"algorithm.name={cls.name}"])
        assert type(cfg.algorithm) is cls.config, cls.name
        # an unset samples_per_prompt follows the shape the algorithm fixes
        assert cfg.samples_per_prompt() == (2 if cls.name == "nash_md" else 8), cls.name
        assert cfg.rollout.samples_per_prompt is None  # and the field keeps what was asked
    # one KL block, each algorithm's defaults: where the KL goes and how it is estimated
    kl = {
        name: (a.beta, a.kl_in_reward, a.kl_estimator)
        for name in ("grpo", "rloo", "ppo", "reinforce_pp")
        for a in [load_config(None, [f"algorithm.name={name}"]).algorithm]
    }
    assert kl == {
        "grpo": (0.0, False, "k3"),
        "rloo": (0.0, True, "k1"),
        "ppo": (0.01, True, "k1"),
        "reinforce_pp": (0.01, True, "k1"),
    }


def test_shipped_configs_load():
    from pathlib import Path

    files = sorted(Path(__file__).parent.parent.joinpath("launch", "configs").glob("*.yaml"))
    assert len(files) >= 3, files  # the glob must find the shipped examples
    names = {f.stem: load_config(f).algorithm.name for f in files}
    # each example's file name says its algorithm where it is not the default
    for stem, name in names.items():
        for algo in ("ppo", "rloo", "reinforce_pp"):
            if stem.startswith(algo):
                assert name == algo, (stem, name)


def test_scheduling_settings_are_checked_and_resolved():
    cfg = load_config(None, ["rollout.max_staleness=1"])
    assert cfg.make_algorithm().cfg.importance_sampling_cap == 2.0  # stale samples corrected
    assert load_config(None).make_algorithm().cfg.importance_sampling_cap == 0.0  # sync: off
    cfg = load_config(None, ["rollout.max_staleness=1", "algorithm.importance_sampling_cap=0"])
    assert cfg.make_algorithm().cfg.importance_sampling_cap == 0.0  # an explicit choice stands
    # resolved by methods: the fields keep what was written
    assert cfg.algorithm.importance_sampling_cap == 0.0
    assert load_config(None).algorithm.importance_sampling_cap is None
    assert load_config(None).topology.colocate_all is None
    with pytest.raises(ConfigError, match=r"topology\.\{learner\}\.colocated"):
        load_config(None, ["rollout.max_staleness=2", "topology.learner.colocated=true"])
    synchronous = load_config(None)  # every pool takes turns
    assert synchronous.colocated_pools() == ["rollout", "learner", "reference", "reward", "critic"]
    assert load_config(None, ["rollout.max_staleness=1"]).colocated_pools() == []
    cfg = load_config(
        None,
        [
            "topology.colocate_all=false",
            "topology.rollout.colocated=true",
            "topology.learner.colocated=true",
        ],
    )
    assert cfg.colocated_pools() == ["rollout", "learner"]


def test_threads_follow_the_pools_turns():
    import os

    from rlhf.workers.common import compute_threads

    t = load_config(None, ["topology.colocate_all=false", "topology.reference.num_cpus=0.5"])
    assert compute_threads("learner", t) == 1 and compute_threads("reference", t) == 1
    t = load_config(
        None,
        [
            "topology.colocate_all=false",
            "topology.learner.colocated=true",
            "topology.learner.workers=1",
            "topology.learner.num_cpus=0.5",
        ],
    )
    assert compute_threads("learner", t) == len(os.sched_getaffinity(0))
    assert compute_threads("rollout", t) == 1
    t = load_config(None, ["topology.rollout.workers=1", "topology.colocated_threads=4"])
    assert compute_threads("rollout", t) == 4
    t = load_config(None, ["topology.colocate_all=true", "topology.learner.workers=2"])
    assert compute_threads("learner", t) == max(1, len(os.sched_getaffinity(0)) // 2)
    assert t.colocated_pools() == ["rollout", "learner", "reference", "reward", "critic"]


def test_threads_at_once_counts_disaggregated_pools_and_one_colocated_turn():
    import os

    from rlhf.runtime.cluster import threads_at_once

    cores = len(os.sched_getaffinity(0))
    assert threads_at_once(load_config(None), set()) == cores  # the default takes turns
    # (the learner's rank count as a run resolves it for the 1M default: rlhf.runtime.learner_ranks)
    apart = load_config(None, ["topology.colocate_all=false", "topology.learner.workers=2"])
    assert threads_at_once(apart, {"ref_logprobs"}) == 2 + 2 + 1 + 1
    mixed = load_config(None, ["topology.colocate_all=false", "topology.learner.colocated=true"])
    assert threads_at_once(mixed, set()) == 2 + 1 + cores


def test_an_environment_changes_what_scores_and_how_long_a_sample_is(tmp_path):
    plain = load_config(None, [])
    assert plain.reward.functions is None  # as written: unset
    assert [f.name for f in plain.reward_functions()] == ["addition_exact"]
    assert plain.rollout.completion_tokens() == plain.rollout.max_new_tokens
    env = load_config(None, ["rollout.environment=calculator", "rollout.max_new_tokens=8"])
    assert env.reward_functions() == []  # the environment's rewards alone
    assert env.rollout.completion_tokens() == 8 * 4  # max_turns 4
    assert (
        load_config(None, [*ENV, "rollout.max_episode_tokens=20"]).rollout.completion_tokens() == 20
    )
    named = load_config(None, [*ENV, "reward.functions=[{name: final_number}]"])
    assert [f.name for f in named.reward_functions()] == ["final_number"]
    (tmp_path / "config.yaml").write_text(dump_config(env))
    again = load_config(tmp_path / "config.yaml")  # config.yaml keeps it unset
    assert again.reward.functions is None and again.reward_functions() == []
    with pytest.raises(ConfigError, match="both empty"):
        load_config(None, ["reward.functions=[]"])
    with pytest.raises(
        ConfigError, match="rollout.environment .multi-turn episodes. runs with.*not online_dpo"
    ):
        load_config(None, [*ENV, "algorithm.name=online_dpo"])


ENV = ["rollout.environment=calculator"]


def test_tools_make_episodes_scored_by_the_reward_functions():
    cfg = load_config(None, ["rollout.tools=[tests.test_episodes:multiply]"])
    assert cfg.rollout.runs_episodes() and cfg.rollout.completion_tokens() == 4 * 4
    assert [f.name for f in cfg.reward_functions()] == ["addition_exact"]  # they score the answer
    with pytest.raises(ConfigError, match="rollout.tools run in the built-in tool environment"):
        load_config(None, [*ENV, "rollout.tools=[tests.test_episodes:multiply]"])
    with pytest.raises(ConfigError, match="rollout.tools .*not nash_md"):
        load_config(
            None, ["rollout.tools=[tests.test_episodes:multiply]", "algorithm.name=nash_md"]
        )


def test_adapter_sync_where_no_engine_can_take_an_adapter_names_the_field():
    """sync.lora=adapter needs plain vLLM engines; auto sends the adapter to vLLM engines on
    GPUs and merged weights elsewhere (CPU, the HF engine, the mixture engine)."""
    gpus = "topology.rollout.num_gpus=1"
    for engine in (["rollout.engine=hf"], ["algorithm.name=nash_md"]):
        with pytest.raises(ConfigError, match="sync.lora='adapter' needs plain vLLM engines"):
            load_config(None, ["model.lora.rank=8", "sync.lora=adapter", *engine])
        assert not load_config(None, ["model.lora.rank=8", gpus, *engine]).sends_adapter()
    assert load_config(None, ["model.lora.rank=8", gpus]).sends_adapter()
    assert not load_config(None, ["model.lora.rank=8"]).sends_adapter()  # CPU: merged
    assert load_config(None, ["model.lora.rank=8", "sync.lora=adapter"]).sends_adapter()
    assert not load_config(None, ["model.lora.rank=8", gpus, "sync.lora=merged"]).sends_adapter()
    assert not load_config(None, [gpus]).sends_adapter()  # no LoRA: the full weights
    with pytest.raises(ConfigError, match="model.lora.rank=1024 exceeds vLLM's largest"):
        load_config(None, ["model.lora.rank=1024", gpus])
    assert not load_config(None, ["model.lora.rank=1024"]).sends_adapter()  # merged: any rank
