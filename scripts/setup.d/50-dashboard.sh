#!/usr/bin/env bash
# Dashboard: CJK fonts so Chinese labels render in the headless-Chromium screenshot (and in
# any browser on this machine) instead of tofu boxes. Idempotent: installs only when missing.
set -euo pipefail
if command -v fc-list >/dev/null && [ -n "$(fc-list :lang=zh 2>/dev/null | head -n1)" ]; then
  exit 0
fi
echo "setup: installing Debian package fonts-noto-cjk (Chinese text in the dashboard)"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends fonts-noto-cjk fontconfig >/dev/null
fc-cache -f >/dev/null 2>&1 || true
