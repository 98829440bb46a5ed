# The two README commands: `make demo` (main job on the embedded default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
CONSTRAINTS := $(CURDIR)/constraints.txt
STAMP := $(VENV)/.installed
DEEPSPEED := deepspeed>=0.19.8,<0.20

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c $(CONSTRAINTS) "torch==2.13.0"
	$(PIP) install -c $(CONSTRAINTS) "setuptools>=68" wheel packaging ninja psutil py-cpuinfo
	$(PIP) install -c $(CONSTRAINTS) --no-build-isolation "$(DEEPSPEED)"
	$(PIP) install -c $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)  # run again: continues an interrupted run, or re-evaluates a finished one
	$(VENV)/bin/cllm4rec demo --resume-or-start

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
