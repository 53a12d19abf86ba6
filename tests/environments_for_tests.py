"""Environments for tests, loaded by the rollout workers as 'tests.environments_for_tests:...'."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rlhf.envs import Step


class MarkedHint:
    """Two policy turns with a hint between them, the second scored against the prompt's
    `answer`. The first step leaves a file named after its worker's pid in the `marks`
    column's folder and then takes `LINGER_S`: a worker killed once its mark shows is killed
    inside an episode, with its first turn done and its second not begun."""

    LINGER_S = 1.0

    def reset(self, prompt: str, answer: object, marks: str, **columns: object) -> None:
        self.answer, self.marks, self.turns = str(answer), Path(marks), 0

    def step(self, text: str) -> Step:
        self.turns += 1
        if self.turns == 1:
            (self.marks / str(os.getpid())).touch()
            time.sleep(self.LINGER_S)
            return Step(observation=" 1+1=")
        return Step(reward=1.0 if text.strip() == self.answer else 0.0, done=True)
