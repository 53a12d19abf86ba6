"""The Ray runtime: the cluster, placement, the actor pools, calls with deadlines, elastic membership, worker logs."""
