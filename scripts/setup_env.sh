#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine: apt packages, a virtual environment in .venv,
# xtts-ft with its dev/eval/hub/hf/web/serve/cluster extras. `make demo` and `make test` call it first; a second
# run does nothing unless pyproject.toml or this script changed.
#
# torch is pinned here, before the package: torch==2.14.1 (a CUDA build that also runs on CPU)
# is the build beside which PyPI's torchaudio 2.11 loads (coqui-tts's `import TTS` needs
# torchaudio + torchcodec + Debian's ffmpeg). An unpinned `torch` could pull another multi-GB build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

missing=()
# chromium + chromium-driver: the web demo's browser test (tests/stages/test_web.py, selenium).
for pkg in espeak-ng ffmpeg chromium chromium-driver; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
# Debian's own python3 needs python3-venv for `python3 -m venv` (a pyenv/python.org build has it).
if ! "$PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1; then
  missing+=("python3-venv")
fi
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}" >/dev/null
fi

[ -x "$VENV/bin/pip" ] || { rm -rf "$VENV"; "$PYTHON" -m venv "$VENV"; }
stamp="$VENV/.setup-$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "installing xtts-ft into $VENV (first time: a few minutes, ~7 GB with torch's CUDA libraries)"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q torch==2.14.1 torchaudio==2.11.0 torchcodec==0.17.0
  "$VENV/bin/pip" install -q -e ".[dev,eval,hub,hf,web,serve,cluster]"
  # resemblyzer depends on `webrtcvad`, which imports pkg_resources (gone from new setuptools);
  # `webrtcvad-wheels` ships the same module without that import.
  "$VENV/bin/pip" uninstall -y -q webrtcvad >/dev/null 2>&1 || true
  "$VENV/bin/pip" install -q --force-reinstall --no-deps webrtcvad-wheels
  rm -f "$VENV"/.setup-*
  touch "$stamp"
fi
