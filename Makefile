# The two commands: `make demo` runs the whole marketplace on this machine, `make test` runs the test suite.
# Both create .venv and install what they need on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium

.PHONY: demo test screenshots lint format check install clean chromium

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py seed_demo
	$(BIN)/python manage.py catalogue_sync
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/honcho start --procfile Procfile.demo

test: $(STAMP)
	@test -x $(CHROMIUM) || $(MAKE) --no-print-directory chromium
	$(BIN)/pytest $(PYTEST_ARGS)

# The README's screenshots, taken again by the browser journeys (`make test` writes its own to var/screenshots/).
screenshots: $(STAMP)
	@test -x $(CHROMIUM) || $(MAKE) --no-print-directory chromium
	IDLEFLEET_SCREENSHOTS=docs/screenshots IDLEFLEET_BROWSER_TESTS=required $(BIN)/pytest tests/browser $(PYTEST_ARGS)

# tests/browser drive Debian's chromium through Playwright (which never downloads a browser of its own). Without it
# those tests skip, saying why (CI sets IDLEFLEET_BROWSER_TESTS=required, so there they fail instead).
chromium:
	@echo "installing Debian's chromium for the browser tests"
	@if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo -n"; fi; \
	  { $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	  || echo "could not install chromium (apt-get as root or passwordless sudo is needed): browser tests will skip"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/python manage.py check

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var/*.sqlite3* var/celerybeat-schedule* var/localstripe-demo.pickle* staticfiles
