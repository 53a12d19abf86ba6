"""Starting a run: `rlhf train`, and the mistakes found before anything starts."""
