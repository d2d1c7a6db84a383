#!/usr/bin/env bash
# Python environment: a virtualenv outside the checkout (torch is a few GB: install it once
# per machine, not once per clone), then the project itself, editable, from this checkout.
set -euo pipefail
VENV="${SEEKWATCH_VENV:-$HOME/.cache/seekwatch/venv}"
if [ ! -x "$VENV/bin/python" ]; then
  # Python 3.11 or later (pyproject's requires-python): `python3` where it is recent enough,
  # else a versioned one beside it (on Ubuntu 22.04 python3 is 3.10, python3.11 a package of its own)
  PYTHON=""
  for candidate in python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null 2>&1 \
        && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
      PYTHON="$candidate"
      break
    fi
  done
  if [ -z "$PYTHON" ]; then
    found="no python3"
    if command -v python3 >/dev/null 2>&1; then found="$(python3 --version 2>&1 | head -n 1)"; fi
    echo "setup: seekwatch needs Python 3.11 or later ($found); install python3.11 and python3.11-venv" >&2
    exit 1
  fi
  echo "setup: creating virtualenv $VENV ($("$PYTHON" --version 2>&1))"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
# Re-pointing the editable install at this checkout is cheap; dependencies already satisfied
# are not downloaded again. constraints.txt holds the versions the tests last passed with.
"$VENV/bin/pip" install -q --disable-pip-version-check -c constraints.txt -e ".[dashboard,test]"
