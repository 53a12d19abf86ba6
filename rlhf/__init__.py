"""rlhf: distributed online RLHF on Ray."""
