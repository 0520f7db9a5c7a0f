#!/usr/bin/env bash
# Sets up a fresh machine for mm: system tools, a CPU torch build (unless torch is already there), and
# the package with its test and serving extras. Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v espeak-ng >/dev/null 2>&1; then
  # espeak-ng speaks the built-in data's captions (the audio modality of the synthetic dataset).
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null
  else
    echo "scripts/install.sh: espeak-ng not found and cannot apt-get it; the built-in data will have no audio." >&2
    echo "  Install it with your package manager (Debian/Ubuntu: sudo apt-get install espeak-ng)." >&2
  fi
fi

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  # Headless Chromium and its driver run the search page's browser test (tests/test_serving_page.py); Selenium's
  # own browser download needs the internet, Debian's packages do not.
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "scripts/install.sh: chromium/chromedriver not found and cannot apt-get them; the browser test will fail." >&2
    echo "  Install them with your package manager (Debian: sudo apt-get install chromium chromium-driver)." >&2
  fi
fi

PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  # An unpinned `torch` pulls the multi-GB CUDA build; on a CPU machine take the CPU wheel.
  # On a GPU machine, install the torch build for your CUDA first and this step is skipped.
  "$PY" -m pip install -q "torch==${MM_TORCH_VERSION:-2.13.0}"
fi
# dev: the tests' tools (pytest, librosa, Selenium for the page's browser test, hadolint); serve: mm-serve, mm-index,
# mm-export (FastAPI, FAISS, ONNX Runtime);
# bench: the optimizers the meta-controller benchmark compares with (its tests build them too), the serving load generator.
"$PY" -m pip install -q -e ".[dev,serve,bench]"
