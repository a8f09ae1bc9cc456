# The two commands of the README: `make run` and `make test`. Both create .venv first.
# Another Python gets its own virtualenv: `make test PYTHON=python3.13` uses .venv-python3.13
# (PYTHON may be a command or a path; VENV=... overrides the folder).
PYTHON ?= python3
VENV ?= $(if $(filter python3,$(PYTHON)),.venv,.venv-$(notdir $(PYTHON)))
BIN := $(VENV)/bin

.PHONY: run test lint bench clean chromium

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,bench]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/python main.py serve

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy genqueue

# The browser test drives Debian's headless Chromium: install it when it is missing.
chromium:
	@command -v chromium >/dev/null || { S=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$S apt-get update -qq && $$S apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

test: lint chromium
	$(BIN)/pytest -q

bench: $(BIN)/.installed
	$(BIN)/python -m bench state queue generation webhook http restart compare cluster ack-start threads

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
