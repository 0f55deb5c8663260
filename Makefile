# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test lint install browser clean compose-check

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

## Start the attention service (127.0.0.1:8000) and the web app (127.0.0.1:7860); Ctrl-C stops both.
run: $(STAMP)
	$(PY) -m app.dev_server

## Install what the browser test needs (Debian's chromium), where apt-get and root are available.
browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

## Install everything the tests need, lint, then run the whole suite.
test: $(STAMP) browser
	$(PY) -m ruff check trainer backend app tests benchmarks
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check trainer backend app tests benchmarks

## Build the images and run the stack for real: serve, browse, train -> serve (needs Docker; docs/DOCKER.md).
compose-check: $(STAMP)
	$(PY) docker/compose_check.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
