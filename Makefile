# `make demo` and `make test` work on a fresh clone: each creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DB := sqlite:///subscribers/demo.db
DEMO_ISSUE := 2026-11-26-donnees-ouvertes

.PHONY: demo test test-fast fast-list bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

## demo: the whole path on embedded defaults (SQLite + outbox): import the example list, send the example issue
demo: $(STAMP)
	rm -rf outbox/$(DEMO_ISSUE) subscribers/demo.db subscribers/demo.db-*
	MAILER_DATABASE_URL=$(DEMO_DB) $(BIN)/mailer build $(DEMO_ISSUE)
	MAILER_DATABASE_URL=$(DEMO_DB) $(BIN)/mailer subscribers import subscribers/example.csv
	MAILER_DATABASE_URL=$(DEMO_DB) $(BIN)/mailer send $(DEMO_ISSUE) --yes --allow-draft  # the example is a draft
	MAILER_DATABASE_URL=$(DEMO_DB) $(BIN)/mailer status $(DEMO_ISSUE)
	@echo
	@echo "One .eml per subscriber:"; ls -1 outbox/$(DEMO_ISSUE)/*.eml
	@echo "Preview it: $(BIN)/mailer preview $(DEMO_ISSUE)"

## test: the whole suite, spread over the machine's cores (PostgreSQL variants need MAILER_TEST_DATABASE_URL; browser tests need /usr/bin/chromium)
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto

## test-fast: the quick loop, under 30 s on 2 cores (32 s wall beside a CI run, 43 CPU-s): no browser, no
## slow test (wall-clock scheduler runs, whole-year DST sweeps, real processes killed or signalled, and the
## tests measured at >= 0.1 s each, listed in tests/measured_slow.txt by `make fast-list`), SQLite variants
## only (the PostgreSQL variants, marked `postgresql`, run in `make test` and CI), generated-input tests on
## an eighth of their sample (--fast-sample; never none, the same seed), spread over the cores (pytest-xdist)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not browser and not postgresql" --fast-sample -n auto

## fast-list: measure the fast run and list its tests that take >= 0.1 s each (tests/measured_slow.txt):
## `make test-fast` leaves those to `make test`
fast-list: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not browser and not postgresql" --fast-sample -n auto -p no:randomly \
		--durations=0 --durations-min=0.02 | $(BIN)/python tests/slow_list.py > tests/measured_slow.txt

bench: $(STAMP)
	@for script in bench/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf build outbox test-artifacts subscribers/demo.db subscribers/demo.db-* .pytest_cache
