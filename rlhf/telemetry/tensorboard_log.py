"""TensorBoard event files in the run folder (`<run>/tensorboard`): every numeric metric of
every iteration as a scalar, and every `run.samples_every` iterations a few sampled
completions with their rewards as text. `tensorboard --logdir runs/` shows all runs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

SAMPLES_SHOWN = 4


class TensorBoardLog:
    def __init__(self, folder: Path, purge_step: int | None = None) -> None:
        """`purge_step`: a resumed run; TensorBoard hides what earlier files logged from
        that step on."""
        from torch.utils.tensorboard import SummaryWriter

        self.folder = folder
        self.writer = SummaryWriter(log_dir=str(folder), flush_secs=10, purge_step=purge_step)

    def scalars(self, record: dict[str, Any]) -> None:
        step = int(record["iteration"])
        for key, value in record.items():
            if key == "iteration" or isinstance(value, bool):
                continue
            if isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)

    def samples(self, step: int, rows: list[tuple[str, str, float]]) -> None:
        """(prompt, completion, reward) rows as a Markdown table."""
        lines = ["| prompt | completion | reward |", "|---|---|---|"]
        for prompt, completion, reward in rows[:SAMPLES_SHOWN]:
            lines.append(f"| {_cell(prompt)} | {_cell(completion)} | {reward:.3f} |")
        self.writer.add_text("samples", "\n".join(lines), step)

    def close(self) -> None:
        self.writer.close()


def _cell(text: str) -> str:
    """Text that stays inside one Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", "⏎ ").strip() or " "
