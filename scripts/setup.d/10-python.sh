#!/usr/bin/env bash
# Python environment: a virtualenv outside the checkout (torch is a few GB: install it once
# per machine, not once per clone), then the project itself, editable, from this checkout.
set -euo pipefail
VENV="${SEEKWATCH_VENV:-$HOME/.cache/seekwatch/venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtualenv $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
# Re-pointing the editable install at this checkout is cheap; dependencies already satisfied
# are not downloaded again.
"$VENV/bin/pip" install -q --disable-pip-version-check -e ".[dashboard,test]"
