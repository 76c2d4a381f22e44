# The two commands of the README:
#   make demo   set up a virtualenv (compiled engine) and run the demos (the bus; event sourcing on SQLite)
#   make test   every test: compiled engine, pure engine, PyPy, typing (mypy, pyright), packaging
#   make fuzz   (by hand) the differential test of the two engines, with many random programs
PYTHON ?= python3
PYPY ?= pypy3
PYRIGHT ?= npx --yes pyright@1.1.414
VENV := .venv
PYPY_VENV := .venv-pypy
DOCS_VENV := .venv-docs
SOURCES := pyproject.toml setup.py mediator/_core.pyx mediator/_relay.h mediator/_call.h mediator/_method.h

.PHONY: demo test fuzz test-compiled test-pure test-pypy test-typing test-versions check-packaging docs bench bench-peers bench-hooks bench-transport bench-store clean

demo: $(VENV)/.installed
	$(VENV)/bin/python example/demo.py
	$(VENV)/bin/python example/eventsourcing_demo.py

test: test-compiled test-pure test-pypy test-typing check-packaging docs

$(VENV)/.installed: $(SOURCES)
	rm -f mediator/_core.*.so mediator/_core.*.pyd mediator/_core.c  # never test a stale build
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	MEDIATOR_REQUIRE_EXTENSIONS=1 $(VENV)/bin/pip install -q -e '.[test]' mypy build wheel cibuildwheel Cython 'setuptools>=77'
	touch $@

$(PYPY_VENV)/.installed: $(SOURCES)
	@command -v $(PYPY) >/dev/null || { echo "PyPy is needed for the PyPy leg: apt-get install -y pypy3 pypy3-venv"; exit 1; }
	$(PYPY) -m venv $(PYPY_VENV)
	$(PYPY_VENV)/bin/pip install -q -e '.[test]'
	touch $@

test-compiled: $(VENV)/.installed
	$(VENV)/bin/python -m pytest --engine=compiled -q

test-pure: $(VENV)/.installed
	$(VENV)/bin/python -m pytest --engine=pure -q

test-pypy: $(PYPY_VENV)/.installed
	$(PYPY_VENV)/bin/python -m pytest --engine=pure -q

test-typing: $(VENV)/.installed
	$(VENV)/bin/python -m mypy mediator tests/typing
	$(PYRIGHT) --pythonpath $(VENV)/bin/python tests/typing

# By hand, not in CI: the differential test (tests/test_differential.py) with random seeds
# and many more programs than `make test` runs (FUZZ_EXAMPLES=N to change how many).
FUZZ_EXAMPLES ?= 5000
fuzz: $(VENV)/.installed
	MEDIATOR_FUZZ=1 MEDIATOR_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/python -m pytest --engine=compiled -q \
		--hypothesis-show-statistics tests/test_differential.py

# Not part of `make test` (CI must not depend on them): both engines on every CPython
# 3.9-3.13 that pyenv has here, each in .venv-VERSION; missing versions are skipped.
test-versions:
	@for version in 3.9 3.10 3.11 3.12 3.13; do \
		python=$$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/$$version.*/bin/python 2>/dev/null | tail -n 1); \
		if [ -z "$$python" ]; then echo "== CPython $$version: not installed, skipped"; continue; fi; \
		echo "== CPython $$version ($$python)"; \
		$$python -m venv .venv-$$version && .venv-$$version/bin/pip install -q pytest && \
		MEDIATOR_REQUIRE_EXTENSIONS=1 .venv-$$version/bin/pip install -q -e . && \
		.venv-$$version/bin/python -m pytest -q -p no:cacheprovider --engine=compiled && \
		.venv-$$version/bin/python -m pytest -q -p no:cacheprovider --engine=pure || exit 1; \
	done

# The documentation site, built strictly (a broken link or reference fails); its examples
# are executed by tests/test_docs_examples.py in every test leg.
$(DOCS_VENV)/.installed: docs/requirements.txt
	$(PYTHON) -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/pip install -q -r docs/requirements.txt
	touch $@

docs: $(DOCS_VENV)/.installed
	$(DOCS_VENV)/bin/python docs/chart.py
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs build --strict --quiet --site-dir site

check-packaging: $(VENV)/.installed
	$(VENV)/bin/python scripts/check_packaging.py

bench: $(VENV)/.installed $(PYPY_VENV)/.installed
	$(VENV)/bin/python benchmarks/run.py --python $(VENV)/bin/python --pypy $(PYPY_VENV)/bin/python --repeat 3 --json benchmarks/results/bench.json

bench-peers: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/peers.py --python $(VENV)/bin/python

# The event store against eventsourcing 9.5.6 and raw driver loops, on SQLite and the local
# PostgreSQL (MEDIATOR_BENCH_POSTGRES, default postgresql://postgres@127.0.0.1:5432/postgres).
bench-store: $(VENV)/.installed
	$(VENV)/bin/pip install -q -r benchmarks/requirements-store.txt
	$(VENV)/bin/python benchmarks/store.py --rounds 5

# The pure engine's hooked path against the least each dispatch design can cost (needs valgrind).
bench-hooks: $(VENV)/.installed
	$(VENV)/bin/python benchmarks/hook_designs.py --instructions

# End-to-end throughput of the transports against raw redis-py / nats-py loops and FastStream,
# on the Redis (127.0.0.1:6379) and NATS JetStream (127.0.0.1:4222) of this machine.
bench-transport: $(VENV)/.installed
	$(VENV)/bin/pip install -q -e '.[redis,nats]'
	$(VENV)/bin/python benchmarks/transport.py --python $(VENV)/bin/python --repeat 3

clean:
	rm -rf $(VENV) $(PYPY_VENV) $(DOCS_VENV) site build dist *.egg-info mediator/_core.c mediator/*.so
