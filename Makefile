# chipq: the two commands are `make demo` and `make test`; each works on a
# fresh machine by itself (venv, install, Kafka jars, broker start and stop).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
export CHIPQ_HOME ?= $(CURDIR)/.chipq
export DAGSTER_HOME ?= $(CHIPQ_HOME)/dagster

.PHONY: demo test lint unit install clean ui compose-plugin kubeconform chromium prometheus postgres reliability

# The docker client here may lack the compose plugin; the test that checks
# docker-compose.yml then uses one built from the Go module proxy (once).
COMPOSE_VERSION := v2.32.4
COMPOSE_PLUGIN  := $(CHIPQ_HOME)/tools/docker/cli-plugins/docker-compose

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	@command -v java >/dev/null || { echo "need Java 17+ (apt-get install openjdk-17-jre-headless)"; exit 1; }
	@command -v mvn >/dev/null || { echo "need Maven to fetch the Kafka jars (apt-get install maven)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)
	mkdir -p $(DAGSTER_HOME)

install: $(STAMP)

# Debian's Chromium for the browser test of the Dagster UI (root: apt-get).
chromium:
	@bash scripts/install-chromium.sh

# Debian's Prometheus (server + promtool) for the monitoring tests; its system service stays off.
prometheus:
	@bash scripts/install-prometheus.sh

# Debian's PostgreSQL server programs: the daemon test also runs on Dagster's PostgreSQL storage,
# on a server the tests start and stop themselves (root: apt-get; no cluster of the package's own).
postgres:
	@bash scripts/install-postgres.sh

compose-plugin:
	@if command -v docker >/dev/null && ! docker compose version >/dev/null 2>&1 && [ ! -x $(COMPOSE_PLUGIN) ]; then \
	  if command -v go >/dev/null; then \
	    echo "building the docker compose plugin $(COMPOSE_VERSION) (once, ~2 min)"; \
	    mkdir -p $(dir $(COMPOSE_PLUGIN)) && \
	    GOBIN=$(CHIPQ_HOME)/tools/gobin go install github.com/docker/compose/v2/cmd@$(COMPOSE_VERSION) && \
	    mv $(CHIPQ_HOME)/tools/gobin/cmd $(COMPOSE_PLUGIN); \
	  else echo "no docker compose plugin and no Go toolchain: the compose check will be skipped"; fi; \
	fi

# kubeconform validates deploy/k8s (tests/unit/test_k8s_manifests.py), built from its Go module once.
# It ships no Kubernetes schemas and downloads them from GitHub by default, which is out of reach
# here: scripts/k8s_json_schemas.py makes them (standalone and strict) from Kubernetes' own OpenAPI
# spec in the k8s.io/kubernetes module on the Go module proxy, once per K8S_SCHEMA_VERSION.
KUBECONFORM_VERSION := v0.8.0
K8S_SCHEMA_VERSION  := 1.35.4
KUBECONFORM         := $(CHIPQ_HOME)/tools/gobin/kubeconform
K8S_SCHEMAS         := $(CHIPQ_HOME)/tools/k8s-schemas

kubeconform:
	@if ! command -v go >/dev/null; then \
	  echo "no Go toolchain: kubeconform cannot be built and the Kubernetes manifest check will fail"; exit 0; fi; \
	if ! go version -m $(KUBECONFORM) 2>/dev/null | grep -q "mod.*kubeconform.*$(KUBECONFORM_VERSION)"; then \
	  echo "building kubeconform $(KUBECONFORM_VERSION) (once)"; \
	  GOBIN=$(CHIPQ_HOME)/tools/gobin go install github.com/yannh/kubeconform/cmd/kubeconform@$(KUBECONFORM_VERSION); \
	fi; \
	if [ ! -d $(K8S_SCHEMAS)/v$(K8S_SCHEMA_VERSION)-standalone-strict ]; then \
	  $(PYTHON) scripts/k8s_json_schemas.py --kubernetes-version $(K8S_SCHEMA_VERSION) --out $(K8S_SCHEMAS); \
	fi

## make demo: start Kafka, run the main job, print what happened, stop everything
demo: install
	$(BIN)/chipq demo

## make test: lint, type-check the events library, run every test on a real broker
## (plus the short reliability cases: bad input, ingest crashes, producer fault, SASL)
test: install lint compose-plugin kubeconform chromium prometheus postgres
	$(BIN)/pytest -ra -p no:cacheprovider -m "not reliability or short"

## make reliability: faults, bad input, load, a soak (CHIPQ_SOAK_SECONDS, default 600) alongside, and SASL;
## regenerates docs/reliability.md (about 15 minutes)
reliability: install
	CHIPQ_SOAK_SECONDS=$${CHIPQ_SOAK_SECONDS:-600} CHIPQ_RELIABILITY_REPORT=$(CURDIR)/docs/reliability.md \
	  $(BIN)/pytest -ra -p no:cacheprovider -m reliability tests/reliability

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -ra tests/unit

ui: install
	$(BIN)/chipq ui

clean:
	-$(BIN)/chipq kafka down
	rm -rf $(VENV) .chipq
