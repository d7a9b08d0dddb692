# backupd: `make demo` shows a real backup from nothing; `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PREFIX ?= /opt/backupd

.PHONY: demo test test-fast tools venv lint bench-small clean install uninstall

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# System tools the tests drive for real (git, gpg, rclone, age, sqlite3, PostgreSQL client).
tools:
	@sh scripts/ensure-tools.sh

test: venv tools
	$(BIN)/pytest -q -p no:cacheprovider

test-fast: venv
	$(BIN)/pytest -q -m "not slow"

demo: venv
	$(BIN)/python scripts/demo.py

lint: venv
	$(BIN)/ruff check backupd tests || true
	$(BIN)/mypy backupd || true

clean:
	rm -rf .demo build dist *.egg-info

install:
	sh scripts/install.sh "$(PREFIX)"

uninstall:
	sh scripts/uninstall.sh "$(PREFIX)"
