#!/usr/bin/env bash
# NextChat end-to-end tests (tests/nextchat/): Node.js and npm, from Debian, to build the real
# NextChat from source. The build itself (yarn 1 from npm, `yarn install`, `yarn build`) is done
# by the tests into ~/.cache/seekwatch/nextchat/<source-hash>/ and reused while the source is
# unchanged. Idempotent: installs only what is missing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/apt.sh"
need=()
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  apt_install "NextChat end-to-end tests" "${need[@]}"
fi
