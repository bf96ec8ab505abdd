# Two commands from a fresh machine: `make demo` and `make test` (see README.md).
PYTEST_ARGS ?= -q
# make ui PORT=3001 HOST=0.0.0.0: the UI on another port or interface
PORT ?= 3000
HOST ?= 127.0.0.1
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export SKEWLESS_HOME ?= $(CURDIR)/.skewless
export DAGSTER_HOME ?= $(SKEWLESS_HOME)/dagster

.PHONY: demo demo-scale test ui lint bench clean redis-stop

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/skewless demo $(DEMO_ARGS)

# the same demo on object storage (a moto S3 server) and a 3-master Redis Cluster, both
# started for the run and stopped after (examples/scale/run.py)
demo-scale: $(STAMP)
	$(BIN)/python -m examples.scale.run $(DEMO_ARGS)

test: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || bash .ci/install-chromium.sh || echo "warning: no chromium; the browser UI test will be skipped"
	@bash .ci/install-postgres.sh >/dev/null || echo "warning: no PostgreSQL at 127.0.0.1:5432; the Dagster-instance-on-PostgreSQL tests will be skipped"
	$(BIN)/python -m pytest $(PYTEST_ARGS)

ui: $(STAMP)
	# telemetry off, run monitoring and run retries on, PostgreSQL storage when
	# SKEWLESS_DAGSTER_POSTGRES_URL is set (see skewless/sensors/instance.py)
	$(BIN)/python -m skewless.sensors.instance $(DAGSTER_HOME)
	$(BIN)/dagster dev -w workspace.yaml --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check .

redis-stop: $(STAMP)
	$(BIN)/skewless redis stop

clean: redis-stop
	rm -rf $(SKEWLESS_HOME)
