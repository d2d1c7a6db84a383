# seekwatch — the two commands of the README:
#   make demo   set up whatever is missing, then run `seekwatch demo` (the embedded default)
#   make test   set up whatever is missing, build the trained tiny model and NextChat once
#               (tests/prebuild.py, cached), then run the whole test suite
# Setup is idempotent: each scripts/setup.d/*.sh installs one part only when it is missing.
VENV ?= $(HOME)/.cache/seekwatch/venv
export SEEKWATCH_VENV := $(VENV)
PY := $(VENV)/bin/python

.PHONY: setup demo test bench help

help:
	@echo "make demo   # set up what is missing, run seekwatch demo"
	@echo "make test   # set up what is missing, run the tests"

setup:
	@for s in scripts/setup.d/*.sh; do bash "$$s" || exit $$?; done

demo: setup
	$(VENV)/bin/seekwatch demo $(DEMO_ARGS)

test: setup
	$(PY) -m tests.prebuild
	$(PY) -m pytest $(PYTEST_ARGS)
