#!/usr/bin/env bash
# Set up a fresh machine for agentrl development: system packages, the CPU build of PyTorch, and
# agentrl itself with every extra that installs without a GPU. Idempotent; run as root (or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
# bubblewrap: sandbox backend; postgresql: store tests; docker.io: Docker sandbox backend;
# default-jre-headless: ScienceWorld's JVM (Java 17); chromium + chromium-driver: the headless browser
# that tests `agentrl view` (Playwright's own browser download does not work offline).
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    bubblewrap postgresql docker.io default-jre-headless build-essential git procps iproute2 \
    chromium chromium-driver >/dev/null

PY=${PYTHON:-python3}
# The CPU build first: a bare `torch` requirement would otherwise pull a multi-GB CUDA build.
$PY -m pip install -q "torch==2.13.0"
$PY -m pip install -q -e ".[all,dev]"
echo "agentrl installed: $($PY -c 'import agentrl; print(agentrl.__version__)')"
