# Two commands set up a fresh machine:  `make run` serves ./rootfs, `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXPORT ?= ./rootfs
LISTEN ?= tcp://127.0.0.1:5640

.PHONY: venv run test test-fast test-vm bench bench-load demo demo-rootfs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools>=77'
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# Serve a host directory (creates it if missing): make run EXPORT=DIR LISTEN=URL.
run: venv
	mkdir -p $(EXPORT)
	$(VENV)/bin/ninepd --export $(EXPORT) --listen $(LISTEN)

# The whole default suite: unit, integration, diod and VM tests (VM tests skip without QEMU).
test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -q -m "not vm and not debian" $(PYTEST_ARGS)

test-vm: venv
	$(PY) -m pytest -q -m "vm or debian" $(PYTEST_ARGS)

# A busybox root in ./demo-root, then a diskless QEMU guest that runs a command in it.
demo-rootfs: venv
	$(VENV)/bin/ninep rootfs busybox ./demo-root

demo: demo-rootfs
	$(VENV)/bin/ninep vm ./demo-root --cmd 'uname -a; mount | grep " / "; echo hello from the guest > /hello; cat /hello'

bench: venv
	$(PY) benchmarks/codec.py

# ninepd vs diod side by side (needs diod and ../shared/tools/ninep-load, or NINEP_LOAD_SRC=DIR).
bench-load: venv
	$(PY) benchmarks/load.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# Coverage-guided fuzzing (docs/fuzzing.md): each harness for FUZZ_RUNS executions, the
# work corpus in $(FUZZ_WORK)/<harness>, its log in $(FUZZ_WORK)/<harness>.log, crashes
# saved as $(FUZZ_WORK)/<harness>-crash-*. Needs the `fuzz` extra; cmdline needs clang.
FUZZ_RUNS ?= 1000000
FUZZ_WORK ?= /tmp/ninep-fuzz
FUZZ_HARNESSES ?= codec session config vsock cmdline
.PHONY: fuzz fuzz-deps
fuzz-deps: venv
	$(PY) -m pip install -q -e '.[fuzz]'

fuzz: fuzz-deps
	@for h in $(FUZZ_HARNESSES); do \
	  mkdir -p $(FUZZ_WORK)/$$h; \
	  echo "fuzz.$$h: $(FUZZ_RUNS) runs, log $(FUZZ_WORK)/$$h.log"; \
	  nice -n 10 $(PY) -m fuzz.$$h -runs=$(FUZZ_RUNS) -print_final_stats=1 -rss_limit_mb=2048 \
	    -artifact_prefix=$(FUZZ_WORK)/$$h-crash- $(FUZZ_WORK)/$$h fuzz/corpus/$$h \
	    >$(FUZZ_WORK)/$$h.log 2>&1; rc=$$?; \
	  grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|stat::number_of_executed_units|artifact|ERROR' $(FUZZ_WORK)/$$h.log; \
	  if [ $$rc -ne 0 ]; then echo "fuzz.$$h FAILED (exit $$rc): see $(FUZZ_WORK)/$$h.log"; exit 1; fi; \
	done
