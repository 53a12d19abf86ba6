"""CriticWorker: one data-parallel rank of the value model (PPO), trained by DeepSpeed."""

from __future__ import annotations

from rlhf.algorithms.base import ForwardOutput
from rlhf.models.value_model import load_value_model
from rlhf.training.train_step import Tensors
from rlhf.workers.deepspeed_worker import DeepSpeedWorker


class CriticWorker(DeepSpeedWorker):
    role = "critic"

    def load_model(self):
        return load_value_model(self.cfg.critic.init_from or self.model_path)

    def forward(self, model, mb: Tensors) -> ForwardOutput:
        return ForwardOutput(values=model(mb["input_ids"], mb["attention_mask"]))

    def loss(self, out: ForwardOutput, mb: Tensors):
        return self.algorithm.value_loss(out, mb)
