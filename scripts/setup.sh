#!/usr/bin/env bash
# One command on a fresh machine: system packages (QEMU, image tools), uv, the workspace, and the
# guest image. Idempotent: a second run only checks. Works as root without stdin (CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-system.sh

# pip puts uv next to python3's scripts (pyenv, venvs) or in ~/.local/bin (--user): look there too.
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$HOME/.local/bin:$PATH"
export PATH
if ! command -v uv >/dev/null 2>&1; then
    echo "setup: installing uv with pip"
    python3 -m pip install --quiet uv
    hash -r
fi

echo "setup: installing the workspace (uv sync)"
uv sync --all-packages --all-extras --frozen

echo "setup: building the guest image (cached after the first build)"
uv run --frozen rlm image build
