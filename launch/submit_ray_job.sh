#!/usr/bin/env bash
# Submit a training run to an existing Ray cluster (see cluster/):
#   RAY_ADDRESS=http://head:8265 bash launch/submit_ray_job.sh -c launch/configs/gpu_example.yaml
# Ray 2.60 uses token auth by default: export RAY_AUTH_MODE=token and have the token in ~/.ray/auth_token.
set -euo pipefail
cd "$(dirname "$0")/.."
exec ray job submit --working-dir . -- rlhf train ray.address=auto "$@"
