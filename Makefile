# Quick start: `make demo` (set up + run the demo), `make test` (set up + run the tests).
# Each target creates .venv with pip on first use and reinstalls when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: demo demo-quick test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/icdistill demo --out $(DEMO_OUT)

demo-quick: $(STAMP)
	$(BIN)/icdistill demo --quick --out $(DEMO_OUT)-quick

# pytest exits 5 when it collects no test; make treats that as a failure, as it should.
test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_OUT) $(DEMO_OUT)-quick .pytest_cache
