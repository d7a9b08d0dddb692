# backupd: `make demo` shows a real backup from nothing; `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PREFIX ?= /opt/backupd

.PHONY: demo test test-fast tools venv lint docs clean install uninstall

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
	$(BIN)/pytest -q -p no:cacheprovider --durations=25 -n 2 --dist loadfile

test-fast: venv
	$(BIN)/pytest -q -m "not slow"

demo: venv
	$(BIN)/python scripts/demo.py

# docs/configuration.md is generated from the config models (a test checks it is current)
docs: venv
	$(BIN)/python -m backupd.docgen > docs/configuration.md

lint: venv
	$(BIN)/mypy backupd

clean:
	rm -rf .demo build dist *.egg-info

install:
	sh scripts/install.sh "$(PREFIX)"

uninstall:
	sh scripts/uninstall.sh "$(PREFIX)"
