"""What a run shows and where: TensorBoard files, Ray metric gauges, worker log files, the
command line that launchers build, and per-pool placement groups (issue 9's pieces, each
without a whole run; tests/test_cluster.py and tests/test_default_run.py run them whole)."""

from __future__ import annotations

import pytest

from rlhf.cli import parse
from rlhf.config import PoolConfig, load_config
from rlhf.runtime.placement import PoolPlacement, bundle_of
from rlhf.runtime.remote import RemoteCallTimeout
from rlhf.runtime.worker_logs import WorkerLogs
from rlhf.telemetry.ray_metrics import readings
from rlhf.telemetry.tensorboard_log import TensorBoardLog


# ---------------------------------------------------------------- TensorBoard
def test_tensorboard_has_every_numeric_metric_per_iteration_and_sample_text(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    tb = TensorBoardLog(tmp_path)
    for it in range(3):
        tb.scalars({"iteration": it, "reward/mean": 0.25 * it, "kl": float("nan"), "ok": True})
    tb.samples(2, [("1+2=", "3", 1.0), ("a|b", "c\nd", 0.0)])
    tb.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    assert events.Tags()["scalars"] == ["reward/mean"]  # NaN and booleans are left out
    assert [(s.step, s.value) for s in events.Scalars("reward/mean")] == [
        (0, 0.0),
        (1, 0.25),
        (2, 0.5),
    ]
    (text,) = events.Tensors("samples/text_summary")
    table = make_ndarray(text.tensor_proto).item().decode()
    assert text.step == 2
    assert "| 1+2= | 3 | 1.000 |" in table
    assert "| a\\|b | c⏎ d | 0.000 |" in table  # a pipe or newline stays inside its cell


# ---------------------------------------------------------------- Ray metric gauges
def test_gauge_readings_of_one_iteration():
    record = {
        "iteration": 7,
        "reward/mean": 0.5,
        "kl": float("nan"),
        "time/generate": 2.0,
        "time/sync": 0.25,
        "sync/bytes": 3e9,
        "sync/send_seconds": 1.5,
        "worker/rollout-1/tokens": 300.0,
        "elastic/rollout_restarts": 2.0,
        "workers/reward": 1.0,
        "rollout/queued_calls": 4.0,
    }
    got = readings(record)
    assert got == {
        ("rlhf_iteration", ()): 7.0,
        ("rlhf_reward_mean", ()): 0.5,
        ("rlhf_sync_seconds", ()): 0.25,
        ("rlhf_sync_gb_per_s", ()): 2.0,  # 3 GB in 1.5 s
        ("rlhf_queued_calls", ()): 4.0,
        ("rlhf_phase_seconds", (("phase", "generate"),)): 2.0,
        ("rlhf_phase_seconds", (("phase", "sync"),)): 0.25,
        ("rlhf_worker_tokens_per_s", (("worker", "rollout-1"),)): 150.0,  # 300 in 2 s
        ("rlhf_restarts", (("pool", "rollout"),)): 2.0,
        ("rlhf_workers", (("pool", "reward"),)): 1.0,
    }  # the NaN KL is left out: the gauge keeps its last reading


# ---------------------------------------------------------------- worker log files
def _lines(pid, lines, ip="10.0.0.2", is_err=False, actor="RolloutWorker"):
    return {"ip": ip, "pid": pid, "lines": lines, "is_err": is_err, "actor_name": actor}


def test_worker_lines_wait_for_the_workers_name_then_go_to_its_file(tmp_path):
    logs = WorkerLogs(tmp_path)
    logs.on_lines(_lines("11", ["vllm starting"]))
    logs.on_lines(_lines("11", ["a warning"], is_err=True))
    logs.on_lines(_lines("11", ["same pid, other node"], ip="10.0.0.3"))
    logs.on_lines(_lines("raylet", ["worker killed"], actor=""))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raylet.log"]
    logs.register("10.0.0.2", 11, "rollout-0")
    logs.on_lines(_lines("11", ["generating"]))
    logs.close()  # what was never named is kept by pid
    assert (tmp_path / "rollout-0.log").read_text().splitlines() == [
        "vllm starting",
        "[stderr] a warning",
        "generating",
    ]
    assert (tmp_path / "process-11.log").read_text() == "same pid, other node\n"
    assert (tmp_path / "raylet.log").read_text() == "worker killed\n"
    assert logs.lines == 5


# ---------------------------------------------------------------- the command line
def test_options_and_overrides_mix_and_a_later_override_wins(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("rollout: {temperature: 0.9}\n")
    args = parse(["train", "ray.address=auto", "-c", str(cfg_file), "rollout.temperature=0.5"])
    assert args.command == "train" and args.config == str(cfg_file)
    cfg = load_config(args.config, args.overrides)
    assert cfg.ray.address == "auto" and cfg.rollout.temperature == 0.5
    args = parse(["train", "ray.address=auto", "ray.address=10.0.0.1:6379"])
    assert load_config(None, args.overrides).ray.address == "10.0.0.1:6379"


def test_pool_resources_and_placement_are_checked_by_name():
    cfg = load_config(None, ["topology.rollout.resources={rollout_node: 1}"])
    assert cfg.topology.rollout.resources == {"rollout_node": 1.0}
    with pytest.raises(Exception, match="topology.rollout.placement"):
        load_config(None, ["topology.rollout.placement=scatter"])
    with pytest.raises(
        Exception, match=r"topology.rollout.resources.rollout_node: .*greater than 0"
    ):
        load_config(None, ["topology.rollout.resources={rollout_node: -1}"])


# ---------------------------------------------------------------- placement groups
def test_bundle_leaves_out_zero_amounts():
    pool = PoolConfig(workers=2, num_cpus=0.5, num_gpus=0, resources={"rollout_node": 1})
    assert bundle_of(pool) == {"CPU": 0.5, "rollout_node": 1.0}
    assert bundle_of(PoolConfig(num_cpus=0)) == {}


@pytest.mark.slow
def test_a_replacement_takes_the_dead_workers_bundle_and_growth_gets_a_group(ray_cluster):
    import ray

    alive: set[str] = set()
    placement = PoolPlacement("rollout", PoolConfig(workers=2, num_cpus=1), 2, lambda: alive)
    try:
        placement.wait_ready(60)
        strategies = {}
        for name in ("rollout-0", "rollout-1"):
            strategies[name] = placement.options(name)["scheduling_strategy"]
            alive.add(name)
        index = {n: s.placement_group_bundle_index for n, s in strategies.items()}
        assert sorted(index.values()) == [0, 1]
        alive.discard("rollout-0")  # died: its bundle is free for the replacement
        again = placement.options("rollout-2")["scheduling_strategy"]
        alive.add("rollout-2")
        assert again.placement_group_bundle_index == index["rollout-0"]
        assert again.placement_group.id == strategies["rollout-0"].placement_group.id
        grown = placement.options("rollout-3")["scheduling_strategy"]  # beyond the start
        assert grown.placement_group.id not in {s.placement_group.id for s in strategies.values()}
        assert len(placement.groups) == 2
        placement.wait_ready(60)

        @ray.remote(num_cpus=1)
        def where() -> str:
            return ray.get_runtime_context().get_placement_group_id()

        got = ray.get(where.options(scheduling_strategy=again).remote(), timeout=60)
        assert got == again.placement_group.id.hex()
    finally:
        placement.remove()


@pytest.mark.slow
def test_a_placement_the_cluster_cannot_hold_names_the_pool_and_what_it_asked(ray_cluster):
    pool = PoolConfig(workers=1, num_cpus=1, resources={"rollout_node": 1})
    placement = PoolPlacement("rollout", pool, 1, set)
    try:
        with pytest.raises(RemoteCallTimeout, match=r"rollout pool's placement .*rollout_node"):
            placement.wait_ready(2)
    finally:
        placement.remove()


# ---------------------------------------------------------------- warnings that reach the console
def test_dropped_rewards_are_warned_about_once(tmp_path, caplog):
    from rlhf.data.tasks import make_task
    from rlhf.driver.trainer import Trainer
    from rlhf.models.default_model import prepare_model

    cfg = load_config(None, [])
    trainer = Trainer(cfg, tmp_path, prepare_model(cfg), make_task(cfg.task))
    try:
        with caplog.at_level("WARNING", logger="rlhf.driver.trainer"):
            trainer._export({"iteration": 0, "reward/dropped": 0.0})
            assert caplog.records == []
            for it in (1, 2):
                trainer._export({"iteration": it, "reward/dropped": 3.0})
        (warning,) = caplog.records
        assert "iteration 1: 3 samples got no reward" in warning.getMessage()
    finally:
        trainer.close()
