#!/usr/bin/env bash
# Submit a training run to a running Ray cluster as a Ray Job (docs/cluster.md):
#   bash launch/submit_ray_job.sh -c launch/configs/gpu_example.yaml rollout.temperature=0.5
# Every argument goes to `rlhf train`, after `ray.address=auto` (so a later one wins). This
# checkout's code is uploaded as the job's working directory; the cluster runs it with the
# Python of its own set-up. Works right after `bash launch/setup.sh`, nothing activated.
#   RAY_ADDRESS          the cluster's dashboard (default http://127.0.0.1:8265)
#   RLHF_CLUSTER_PYTHON  the cluster's Python (default: this checkout's .venv/bin/python, the
#                        path cluster/ray-autoscaler.yaml sets up on every node)
#   RLHF_SUBMIT_FLAGS    more `ray job submit` flags, e.g. "--no-wait --submission-id grpo-1"
# Token authentication (Ray 2.60): RAY_AUTH_MODE=token, and the cluster's token in
# ~/.ray/auth_token, $RAY_AUTH_TOKEN or the file $RAY_AUTH_TOKEN_PATH names.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export RAY_ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}
python_on_cluster=${RLHF_CLUSTER_PYTHON:-$root/.venv/bin/python}
# Left out of the upload (besides what .gitignore leaves out): environments and run folders.
excludes='{"excludes": [".venv", ".git", "runs", "benchmarks/.venv-trl", "__pycache__"]}'
# shellcheck disable=SC2086  # RLHF_SUBMIT_FLAGS is a list of flags
exec "$root/.venv/bin/ray" job submit ${RLHF_SUBMIT_FLAGS:-} --working-dir . \
  --runtime-env-json "$excludes" -- "$python_on_cluster" -m rlhf.cli train ray.address=auto "$@"
