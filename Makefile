# runcontrol developer commands. Every target creates .venv when it is missing.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
RUNTIME_STAMP := $(VENV)/.installed-runtime
TOOLS := .tools
BUF_VERSION := 1.75.0
BUF := $(TOOLS)/node_modules/.bin/buf
PROTOC_GEN_ES := $(TOOLS)/node_modules/.bin/protoc-gen-es
PROTOC_GEN_ES_VERSION := 2.17.0
# Empty: the server's own default (127.0.0.1:50051) or RUNCONTROL_LISTEN decides.
LISTEN ?=
PROTO_FILES := $(wildcard protos/runcontrol/v1/*.proto)
# `buf breaking` compares protos/ with the main branch: the local branch when there is
# one (a fresh clone), else origin/main (a CI checkout of a detached commit); empty
# outside a git checkout. Override with BUF_AGAINST='<buf input>' (relative to protos/).
GIT_DIR_ABS = $(shell git rev-parse --path-format=absolute --git-common-dir 2>/dev/null)
MAIN_REF = $(shell git rev-parse -q --verify refs/heads/main >/dev/null 2>&1 && echo branch=main \
	|| { git rev-parse -q --verify refs/remotes/origin/main >/dev/null 2>&1 && echo ref=origin/main; })
comma := ,
BUF_AGAINST ?= $(if $(and $(GIT_DIR_ABS),$(MAIN_REF)),$(GIT_DIR_ABS)#$(MAIN_REF)$(comma)subdir=protos)

.PHONY: help install serve serve-replicas test pytest lint typecheck proto proto-check bench clean thorough soak

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP) ## create .venv and install the package with its dev dependencies

# Serving needs the server's runtime dependencies only (the `server` extra; the package's
# base dependencies are the client's); the dev install includes them.
$(RUNTIME_STAMP): pyproject.toml | $(PY)
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then touch $@; else \
		$(PY) -m pip install --quiet --upgrade pip && \
		$(PY) -m pip install --quiet -e '.[server]' && touch $@; fi

$(BUF) $(PROTOC_GEN_ES) &:
	npm install --silent --no-audit --no-fund --no-save --prefix $(TOOLS) \
		@bufbuild/buf@$(BUF_VERSION) @bufbuild/protoc-gen-es@$(PROTOC_GEN_ES_VERSION)

serve: $(RUNTIME_STAMP) ## serve on 127.0.0.1:50051, in memory (LISTEN=HOST:PORT or RUNCONTROL_LISTEN)
	$(VENV)/bin/runcontrol-server $(if $(LISTEN),--listen $(LISTEN))

serve-replicas: $(STAMP) ## a throwaway PostgreSQL and two replicas on 127.0.0.1:50051 and 50052
	$(PY) -m runcontrol_server.replicas

test: lint typecheck proto-check web-check pytest node-test ## every check and every test (what CI runs)

# The Node client's dependencies and its build (dist/, compiled from src/*.ts with the
# generated src/gen by the package's `prepare` script, which `npm ci` runs): its own
# tests and the README's JavaScript blocks (run by pytest) need them. `npm test`
# rebuilds dist/ first, so node-test always runs the current sources.
NODE_DEPS := client/node/node_modules/.package-lock.json
$(NODE_DEPS): client/node/package-lock.json client/node/package.json
	cd client/node && npm ci --no-audit --no-fund --silent

pytest: $(STAMP) $(NODE_DEPS) chromium ## the test suite only, with coverage
	RUNCONTROL_CHROMIUM='$(CHROMIUM)' $(PY) -m pytest --cov --cov-report=term $(PYTEST_ARGS)
	$(PY) -m coverage report --include='*/runcontrol_server/domain/*' --fail-under=95 > /dev/null || \
		{ echo 'domain branch coverage is below 95%:'; $(PY) -m coverage report --include='*/runcontrol_server/domain/*'; exit 1; }

.PHONY: node-test
node-test: $(STAMP) $(NODE_DEPS) ## the Node.js client tests (client/node) against the real server
	cd client/node && RUNCONTROL_PYTHON=$(abspath $(PY)) npm test

lint: $(STAMP) $(BUF) ## ruff, ruff format --check, buf lint, buf breaking vs main, import-linter
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	cd protos && ../$(BUF) lint
	$(if $(BUF_AGAINST),cd protos && ../$(BUF) breaking --against '$(BUF_AGAINST)',@echo 'buf breaking: skipped (no main branch in this checkout)')
	$(VENV)/bin/lint-imports

typecheck: $(STAMP) ## mypy --strict on client and server code
	$(VENV)/bin/mypy

proto: $(STAMP) $(BUF) $(PROTOC_GEN_ES) ## regenerate client/runcontrol/v1 and the TypeScript/JavaScript code (buf.gen.yaml)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m grpc_tools.protoc -I protos \
		--python_out=client --grpc_python_out=client --mypy_out=quiet:client --mypy_grpc_out=quiet:client \
		$(PROTO_FILES)
	$(BUF) generate

GENERATED := client/runcontrol/v1 client/node/src/gen client/web/src/gen
proto-check: proto ## fail when the committed generated code differs from `make proto`
	@git diff --exit-code -- $(GENERATED) || { echo 'generated code drifted: run make proto and commit'; exit 1; }
	@test -z "$$(git status --porcelain -- $(GENERATED))" || { echo 'untracked or deleted generated files:'; git status --porcelain -- $(GENERATED); exit 1; }

# The web view (client/web): TypeScript bundled by esbuild into the server package's
# runcontrol_server/http/web_assets/, which is committed (serving the page needs no
# Node.js) and checked for drift like the generated code.
WEB_DEPS := client/web/node_modules/.package-lock.json
WEB_ASSETS := server/runcontrol_server/http/web_assets
$(WEB_DEPS): client/web/package-lock.json client/web/package.json
	cd client/web && npm ci --no-audit --no-fund --silent

.PHONY: web web-check chromium
web: $(WEB_DEPS) ## type-check client/web and rebuild the web view into the server package
	cd client/web && npm run --silent typecheck && npm run --silent build

web-check: web ## fail when the committed web view differs from `make web`
	@git diff --exit-code -- $(WEB_ASSETS) || { echo 'web view drifted: run make web and commit'; exit 1; }
	@test -z "$$(git status --porcelain -- $(WEB_ASSETS))" || { echo 'untracked or deleted web view files:'; git status --porcelain -- $(WEB_ASSETS); exit 1; }

# The browser test (tests/test_web_view.py) drives Debian's Chromium with Playwright (the
# PyPI package, in the dev extra; its own browser downloads are not used). Installed here
# when missing; CHROMIUM names another binary (Chromium or Chrome) instead.
CHROMIUM ?= /usr/bin/chromium
chromium: ## make sure the browser test's Chromium is installed (apt-get, as root)
	@if [ ! -x '$(CHROMIUM)' ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo 'installing Chromium for the browser test (apt-get install chromium)'; \
			apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
		else \
			echo 'the browser test needs Chromium at $(CHROMIUM): run `sudo apt-get install chromium`'; \
			echo '(Debian/Ubuntu) or pass CHROMIUM=/path/to/chromium-or-chrome'; exit 1; \
		fi; \
	fi

$(VENV)/.installed-bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	@touch $@

bench: $(VENV)/.installed-bench ## benchmarks vs baselines, report in BENCHMARKS.md (QUICK=1: about 1 min); not in test
	$(PY) -m bench $(if $(QUICK),--quick,)

thorough: $(STAMP) ## the model-based test at full size: 1,000 programs of 50 steps per store (minutes)
	$(PY) -m pytest tests/model -p no:cacheprovider -q --timeout 0 --hypothesis-profile thorough

soak: $(VENV)/.installed-bench ## mixed load on a real server for SOAK_SECONDS (60); table + soak-report/soak.png
	$(PY) -m bench.soak --seconds $(or $(SOAK_SECONDS),60) --out soak-report

clean: ## remove the virtualenv, tools and caches
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache .coverage
