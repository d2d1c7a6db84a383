#!/usr/bin/env bash
# Dashboard: CJK fonts so Chinese labels render in the headless-Chromium screenshot (and in
# any browser on this machine) instead of tofu boxes. Idempotent: installs only when missing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/apt.sh"
if command -v fc-list >/dev/null && [ -n "$(fc-list :lang=zh 2>/dev/null | head -n1)" ]; then
  exit 0
fi
apt_install "Chinese text in the dashboard" fonts-noto-cjk fontconfig
fc-cache -f >/dev/null 2>&1 || true
