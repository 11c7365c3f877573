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

# A new shell must find uv too (the README's test command is `uv run nox`): pip may have put it in
# a directory that is not on the login PATH (pyenv has no shim for it until `pyenv rehash`).
if command -v pyenv >/dev/null 2>&1; then
    pyenv rehash 2>/dev/null || true
fi
if ! env -i HOME="$HOME" USER="${USER:-}" bash -lc 'command -v uv' >/dev/null 2>&1; then
    uv_bin=$(command -v uv)
    if [ -w /usr/local/bin ]; then
        ln -sf "$uv_bin" /usr/local/bin/uv
        echo "setup: linked $uv_bin into /usr/local/bin so that new shells find it"
    else
        mkdir -p "$HOME/.local/bin"
        ln -sf "$uv_bin" "$HOME/.local/bin/uv"
        uv_hint="export PATH=\"\$HOME/.local/bin:\$PATH\""
    fi
fi

echo "setup: installing the workspace (uv sync)"
# Bytecode compiled now, once: uv does not by default, and where PYTHONDONTWRITEBYTECODE is set
# Python never caches it either, so each `rlm` start compiled its imports afresh (~0.2-0.4 s of
# the start to the first model request; README, Performance).
uv sync --all-packages --all-extras --frozen --compile-bytecode

echo "setup: building the guest image (cached after the first build)"
uv run --frozen rlm image build

echo "setup: done. Run the test suite with: uv run nox"
if [ -n "${uv_hint:-}" ]; then
    echo "setup: uv is in ~/.local/bin, which new shells do not search yet; run this once (or add it to ~/.profile):"
    echo "    $uv_hint"
fi
