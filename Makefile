# barterbackup: every task a developer or CI runs.
#   make demo   - the offline multi-node demo (sets everything up first)
#   make test   - lint, codegen drift check, type check, the whole trial suite
#   make bench  - benchmarks printing ratios measured in the same run
#   make bench-scale - the 20 GiB and 1,000,000-file runs (~21 GiB free disk)
#   make fuzz   - the long fuzz campaign (BARTERBACKUP_FUZZ_EXAMPLES per
#                 target, default 20000; BARTERBACKUP_FUZZ_SECONDS caps each)
#   make rpc    - regenerate barterbackup/_proto from proto/

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TRIAL_ARGS ?= tests

.PHONY: all venv system-deps bench-deps rpc check-rpc lint-proto lint typecheck check \
	unit test fuzz demo bench bench-scale clean

all: test

system-deps:
	@PYTHON=$(PYTHON) sh tools/system-deps.sh

bench-deps:
	@PYTHON=$(PYTHON) sh tools/system-deps.sh bench

$(STAMP): requirements.txt requirements-dev.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	# compat mode puts the source tree on sys.path through a .pth file, so
	# twistd finds twisted/plugins/barterbackup_plugin.py in the checkout.
	$(PY) -m pip install -q --no-deps -e . --config-settings editable_mode=compat
	touch $@

venv: $(STAMP)

rpc: venv
	$(PY) tools/gen_rpc.py

check-rpc: venv
	$(PY) tools/gen_rpc.py --check

lint-proto: venv
	$(PY) tools/lint_proto.py

lint: venv
	$(VENV)/bin/ruff check barterbackup tests tools bench twisted
	$(VENV)/bin/ruff format --check barterbackup tests tools bench twisted

typecheck: venv
	$(VENV)/bin/mypy barterbackup

check: lint-proto check-rpc lint typecheck

unit: venv
	$(VENV)/bin/trial -j2 $(TRIAL_ARGS)

test: system-deps venv check
	$(PY) tools/trial_summary.py -j2 tests

fuzz: venv
	$(PY) tools/fuzz.py

demo: system-deps venv
	$(PY) -m barterbackup.demo

bench: bench-deps venv
	$(PY) -m bench

# bench/scale.py: needs ~21 GiB free under /tmp (or BENCH_SCALE_ARGS=
# "--workdir DIR"); about half an hour on a 2-core machine.
bench-scale: bench-deps venv
	$(PY) -m bench.scale $(BENCH_SCALE_ARGS)

clean:
	rm -rf $(VENV) _trial_temp* .mypy_cache .ruff_cache build *.egg-info
