# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv, installs the CPU build of torch first when torch is missing,
# then the project with exact versions from constraints.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SAMPLE := sample_data/3d
DEMO_OUT := outputs/demo

.PHONY: install demo test clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[test,samples]"
	$(PIP) install -q --no-deps spm-runtime==25.1.2.post4 matlab-runtime==0.0.6
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m bundle demo --output_dir $(DEMO_OUT)

test: install
	$(VENV)/bin/ruff check bundle benchmarks tests
	$(PY) -m pytest -q -n 2 --dist loadfile tests

clean:
	rm -rf $(VENV) sample_data outputs runs
