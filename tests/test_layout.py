"""The package's rooms: each module imports only from its own room or the rooms below it
(docs/architecture.md, "Pieces and their one job"), so no import runs back up."""

from __future__ import annotations

import ast
from pathlib import Path

import rlhf

PACKAGE = Path(rlhf.__file__).parent

# room -> level; a room may import from its own level and the levels below it
ROOMS = {
    "rlhf.configbase": 0,
    "rlhf.types": 0,
    "rlhf.batch": 0,
    "rlhf.checkpoint": 0,
    "rlhf.config": 0,
    "rlhf.data": 1,
    "rlhf.sync": 1,
    "rlhf.telemetry": 1,
    "rlhf.models": 2,
    "rlhf.algorithms": 2,
    "rlhf.engines": 2,
    "rlhf.rewards": 2,
    "rlhf.training": 2,
    "rlhf.envs": 2,
    "rlhf.workers": 3,
    "rlhf.runtime": 4,
    "rlhf.evaluation": 4,
    "rlhf.driver": 5,
    "rlhf.run": 6,
    "rlhf.cli": 7,
}


def room_of(module: str) -> str:
    parts = module.split(".")
    for n in (2, 1):
        if ".".join(parts[:n]) in ROOMS:
            return ".".join(parts[:n])
    raise AssertionError(f"{module} is in no room: add it to ROOMS and docs/architecture.md")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(
        ".__init__"
    )


def runtime_imports(path: Path) -> list[tuple[str, int]]:
    """The rlhf modules a file imports when it runs (anywhere in it, functions included),
    leaving out `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text())
    type_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlhf"):
            if node.module == "rlhf":  # `from rlhf import x`: x is the module
                found += [(f"rlhf.{a.name}", node.lineno) for a in node.names]
            else:
                found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("rlhf.")]
    return found


def test_no_import_runs_back_up_a_room():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = module_name(path)
        for other, line in runtime_imports(path):
            if ROOMS[room_of(other)] > ROOMS[room_of(me)]:
                if me == "rlhf.config":
                    continue  # its sections, checked below
                wrong.append(f"{me}:{line} imports {other} ({room_of(other)} is above)")
    assert not wrong, "\n".join(wrong)


def test_the_config_gathers_sections_from_modules_that_do_not_import_it():
    """config.py imports each room's own config section (an algorithm's block beside its
    loss); none of those modules imports the config back when it runs."""
    gathered = [m for m, _ in runtime_imports(PACKAGE / "config.py") if ROOMS[room_of(m)] > 0]
    assert gathered, "config.py gathers no section: drop this test's exception"
    for module in gathered:
        path = PACKAGE.parent / Path(*module.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        back = [m for m, line in runtime_imports(path) if m == "rlhf.config"]
        assert not back, f"{module} imports rlhf.config: a cycle with config.py"


def test_the_package_root_holds_only_the_shared_vocabulary_and_the_command():
    root = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert root == ["__init__", "batch", "checkpoint", "cli", "config", "configbase", "types"]
    rooms = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    documented = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for room in rooms:
        assert f"`{room}/`" in documented, f"rlhf/{room}/ is not in docs/architecture.md"


def test_one_stage_table_gives_the_stages_the_pools_and_the_checks():
    from rlhf.algorithms import REGISTERED
    from rlhf.algorithms.base import STAGES, started_pools
    from rlhf.config import ConfigError, load_config
    from rlhf.driver.stages import STAGE_CLASSES

    assert list(STAGE_CLASSES) == list(STAGES)  # a stage for every column, in table order
    assert started_pools(set()) == ["rollout", "learner", "reward"]
    assert started_pools({"rewards", "ref_logprobs"})[-1] == "reference"
    assert started_pools({"values"})[-1] == "critic"
    for cls in REGISTERED:  # every algorithm's needs are columns of the table
        cfg = load_config(None, [f"algorithm.name={cls.name}", "algorithm.beta=0.1"])
        assert set(cfg.make_algorithm().needs) <= set(STAGES), cls.name
    # the config's check reads the same table: a KL needs the reference pool
    try:
        load_config(None, ["algorithm.beta=0.1", "topology.reference.workers=0"])
    except ConfigError as err:
        assert "topology.reference.workers must be >= 1" in str(err)
    else:
        raise AssertionError("a KL without a reference pool was accepted")


def test_lora_moves_the_reference_stage_to_the_learner_by_the_same_table():
    """With LoRA the learner's base (adapters off) gives the reference log-probs: the run's
    table names the learner for them, so no reference pool starts and its check is moot;
    `reference.separate_pool` keeps the pool."""
    from rlhf.algorithms.base import STAGES, started_pools
    from rlhf.config import load_config
    from rlhf.driver.stages import BaseReferenceStage, ReferenceStage, stage_class

    kl = ["algorithm.beta=0.1", "topology.reference.workers=0"]
    cfg = load_config(None, ["model.lora.rank=8", *kl])  # accepted: no pool is needed
    table = cfg.stage_table()
    assert table["ref_logprobs"] == "learner" and cfg.reference_from_base()
    assert started_pools({"rewards", "ref_logprobs"}, table) == ["rollout", "learner", "reward"]
    assert stage_class("ref_logprobs", table) is BaseReferenceStage
    assert stage_class("ref_logprobs", STAGES) is ReferenceStage
    kept = load_config(None, ["model.lora.rank=8", "algorithm.beta=0.1",
                              "reference.separate_pool=true"])  # fmt: skip
    assert kept.stage_table() == STAGES and not kept.reference_from_base()
    assert started_pools({"ref_logprobs"}, kept.stage_table())[-1] == "reference"
