#!/usr/bin/env bash
# Chromium for the browser tests of `fluid serve` (tests/test_serve_browser.py): Debian's
# `chromium` package, driven by Playwright. Needs apt-get as root (or password-less sudo).
# Where it cannot be installed this says why and exits 0: the browser tests then skip,
# naming the reason, and the rest of the suite runs.
set -uo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "chromium: $(command -v chromium)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "warning: no apt-get here; install Chromium yourself (or set FLUID_CHROMIUM) for the browser tests" >&2
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo)
else
    echo "warning: installing chromium needs root; run 'sudo apt-get install chromium' for the browser tests" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if "${SUDO[@]}" apt-get update -qq && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium; then
    echo "chromium: $(command -v chromium)"
else
    echo "warning: apt-get could not install chromium; the browser tests will skip" >&2
fi
exit 0
