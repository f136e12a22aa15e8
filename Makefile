# Two commands: `make run` serves the API locally, `make test` runs the whole suite.
# Both bootstrap a fresh clone first (venv + pip, npm ci); `make test` also installs Debian chromium.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PY_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: run test bootstrap clean bench

bootstrap: $(PY_STAMP) $(NODE_STAMP)

# Debian chromium for the browser end-to-end tests (tests/e2e); silent when present.
.PHONY: chromium
chromium:
	@sh scripts/install_chromium.sh

$(PY_STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: bootstrap
	$(PY) -m devhost.local

test: bootstrap chromium
	$(PY) -m pytest

bench: bootstrap
	$(PY) -m bench

clean:
	rm -rf $(VENV) node_modules .local .pytest_cache
