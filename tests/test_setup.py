"""``scripts/setup.d/10-python.sh`` picks an interpreter the project runs on (3.11 or later,
pyproject's ``requires-python``) or stops with one line saying what to install.

The interpreters here are stand-ins (shell scripts answering the script's version check as
a Python 3.10 or 3.12 would): a machine has the versions it has, and this one's would not
show the choice. The PATH holds only them and the few tools the script and the stand-ins
run, so no real interpreter on the machine takes part."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "setup.d" / "10-python.sh"

OLD = """#!/bin/sh
case "$1" in
  --version) echo "Python 3.10.12" ;;
  *) exit 1 ;;
esac
"""

# answers the version check as 3.12 does; "-m venv DIR" makes a venv whose pip logs its calls
NEW = """#!/bin/sh
case "$1" in
  --version) echo "Python 3.12.3" ;;
  -c) exit 0 ;;
  -m) mkdir -p "$3/bin"
      printf '#!/bin/sh\\necho "pip $*" >> "%s/pip.log"\\n' "$3" > "$3/bin/pip"
      printf '#!/bin/sh\\n' > "$3/bin/python"
      chmod +x "$3/bin/pip" "$3/bin/python" ;;
esac
"""


def _run(tmp_path: Path, interpreters: dict[str, str]) -> tuple[subprocess.CompletedProcess, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("head", "mkdir", "chmod"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for name, text in interpreters.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    venv = tmp_path / "venv"
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "SEEKWATCH_VENV": str(venv)}
    out = subprocess.run([shutil.which("bash"), str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    return out, venv


def test_an_older_python3_alone_stops_setup_with_one_line(tmp_path):
    out, venv = _run(tmp_path, {"python3": OLD})
    assert out.returncode == 1
    assert out.stderr.strip() == ("setup: seekwatch needs Python 3.11 or later (Python 3.10.12); "
                                  "install python3.11 and python3.11-venv")
    assert not venv.exists()


def test_no_python3_at_all_stops_setup_with_one_line(tmp_path):
    out, venv = _run(tmp_path, {})
    assert out.returncode == 1
    assert out.stderr.strip() == ("setup: seekwatch needs Python 3.11 or later (no python3); "
                                  "install python3.11 and python3.11-venv")
    assert not venv.exists()


def test_a_versioned_interpreter_beside_an_older_python3_is_used(tmp_path):
    out, venv = _run(tmp_path, {"python3": OLD, "python3.12": NEW})
    assert out.returncode == 0, out.stderr
    assert f"setup: creating virtualenv {venv} (Python 3.12.3)" in out.stdout
    calls = (venv / "pip.log").read_text().splitlines()
    assert calls == ["pip install -q --upgrade pip",
                     "pip install -q --disable-pip-version-check -c constraints.txt -e .[dashboard,test]"]


def test_the_scripts_python_floor_is_pyprojects():
    """One floor: the version the script checks for is pyproject's ``requires-python``."""
    floor = re.search(r'requires-python = ">=3\.(\d+)"', (ROOT / "pyproject.toml").read_text("utf-8"))
    assert floor, "pyproject.toml lost its requires-python"
    assert f"sys.version_info < (3, {floor.group(1)})" in SCRIPT.read_text("utf-8")


def test_the_constraints_pin_every_package_the_project_names():
    """constraints.txt pins an exact version of each dependency pyproject names (extras included),
    so a fresh machine installs the versions the tests last passed with."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text("utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    wanted = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    named = [re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", d).group(0) for d in wanted]
    missing = [n for n in named if re.sub(r"[-_.]+", "-", n).lower() not in pins]
    assert len(named) > 20 and not missing, f"not pinned in constraints.txt: {missing}"
