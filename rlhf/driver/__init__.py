"""The loop on the driver: `Trainer`, the stages that fill a batch, the rollout scheduler, the elastic pools' driver side."""
