# Two commands set up a fresh machine:  `make run` serves ./rootfs, `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXPORT ?= ./rootfs
LISTEN ?= tcp://127.0.0.1:5640

.PHONY: venv run test test-fast test-vm bench demo-rootfs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# Serve a host directory over TCP (creates ./rootfs if missing).
run: venv
	mkdir -p $(EXPORT)
	$(VENV)/bin/ninepd --export $(EXPORT) --listen $(LISTEN)

# The whole default suite: unit, integration, diod and VM tests (VM tests skip without QEMU).
test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -q -m "not vm and not debian" $(PYTEST_ARGS)

bench: venv
	$(PY) benchmarks/codec.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
