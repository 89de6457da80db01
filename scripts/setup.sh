#!/usr/bin/env bash
# Create .venv in the repository and install offline-rl with its test extras.
#
# torch is installed first, so that installing the project never pulls a build you did not choose:
#   * a machine without an NVIDIA GPU gets the CPU build (torch==2.13.0+cpu): from this machine's own wheels or
#     index when they have it, else from PyTorch's CPU wheel index (https://download.pytorch.org/whl/cpu);
#     PyPI's plain `torch` is the CUDA build, about 20 nvidia packages and several GB;
#   * a machine with one (`nvidia-smi -L` lists a GPU) gets the default build from PyPI (CUDA).
# Override with OFFLINE_RL_TORCH=cpu | cuda | skip (skip: keep the torch already in .venv, or let pip choose).
# `bash scripts/setup.sh --print-torch` prints the pip command it would run for torch and exits.
# Idempotent: a second call only reinstalls when setup.cfg changed.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=2.13.0
CPU_INDEX=https://download.pytorch.org/whl/cpu

case "${OFFLINE_RL_TORCH:-auto}" in
  auto|cpu|cuda|skip) ;;
  *) echo "OFFLINE_RL_TORCH must be auto, cpu, cuda or skip, got '${OFFLINE_RL_TORCH}'" >&2; exit 2 ;;
esac

torch_build() {
  case "${OFFLINE_RL_TORCH:-auto}" in
    auto) if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then echo cuda
          else echo cpu; fi ;;
    *) echo "${OFFLINE_RL_TORCH}" ;;
  esac
}

torch_command() {  # the pip arguments that install the chosen build
  case "$(torch_build)" in
    cpu) echo "torch==${TORCH_VERSION}+cpu --index-url ${CPU_INDEX}" ;;
    cuda) echo "torch==${TORCH_VERSION}" ;;
    skip) echo "" ;;
  esac
}

if [ "${1:-}" = "--print-torch" ]; then
  echo "build: $(torch_build)"
  echo "pip install $(torch_command)"
  exit 0
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.offline-rl-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  case "$(torch_build)" in
    cpu)  # a local wheel or mirror first (fast, offline); PyTorch's CPU index otherwise
      .venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION}+cpu" 2>/dev/null \
        || .venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION}+cpu" --index-url "${CPU_INDEX}" ;;
    cuda) .venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION}" ;;
    skip) ;;
  esac
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  touch "$stamp"
fi
