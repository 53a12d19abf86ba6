"""What a run reports: the metrics log, Ray gauges, TensorBoard, the event log, memory readings."""
