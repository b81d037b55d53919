# Quick start: `make demo` (set up + run the demo), `make test` (set up + run the tests).
# Each target creates .venv with pip on first use and reinstalls when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: demo demo-quick test wheel-check install clean chromium

install: $(STAMP)

# setuptools (the build backend) goes into .venv too, so that wheel-check and
# tests/test_packaging.py can build the wheel offline with --no-build-isolation (a venv made by
# Python >= 3.12 has no setuptools, and only torch/tensorboard pull it in today).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q 'setuptools>=77'
	$(BIN)/python -m pip install -q -e '.[test]'
	@$(MAKE) --no-print-directory chromium
	touch $(STAMP)

# Headless Chromium + chromedriver for tests/test_report_html.py (the report pages in a real
# browser): Debian's packages, installed with apt-get where missing and root or sudo is there;
# elsewhere a note, and that test skips.
chromium:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "note: no chromium/chromedriver and no apt-get: tests/test_report_html.py will skip"; \
	else \
	  if [ "$$(id -u)" = 0 ]; then sudo=; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=none; fi; \
	  if [ "$$sudo" = none ]; then \
	    echo "note: chromium/chromedriver missing and no root or sudo to install them (apt-get install chromium chromium-driver): tests/test_report_html.py will skip"; \
	  else \
	    $$sudo apt-get update -q >/dev/null && $$sudo apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null \
	      || echo "note: apt-get could not install chromium chromium-driver: tests/test_report_html.py will skip"; \
	  fi; \
	fi

demo: $(STAMP)
	$(BIN)/icdistill demo --out $(DEMO_OUT)

demo-quick: $(STAMP)
	$(BIN)/icdistill demo --quick --out $(DEMO_OUT)-quick

# pytest exits 5 when it collects no test; make treats that as a failure, as it should.
# Two pytest-xdist workers of one torch thread each: on 2 cores the suite's many small steps run
# about 1.5x faster this way than in one process of two threads (10 vs 15 min, 2026-12-07).
TEST_WORKERS ?= 2
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS)

# Build the wheel from a copy of the working tree (no stale build/, nothing written into the
# checkout), install it with --target into a scratch folder and run `icdistill demo --quick` from
# outside the source tree, so that icdistill and its configs come from the wheel, not src/.
# Offline: no build isolation (setuptools is in .venv) and --no-deps (.venv has the dependencies).
wheel-check: $(STAMP)
	@set -eu; \
	root=$$(pwd); py="$$root/$(BIN)/python"; \
	tmp=$$(mktemp -d "$${TMPDIR:-/tmp}/icdistill-wheel-check.XXXXXX"); \
	trap 'rm -rf "$$tmp"' EXIT; \
	mkdir -p "$$tmp/tree" "$$tmp/run"; \
	for f in pyproject.toml README.md LICENSE setup.py setup.cfg MANIFEST.in; do \
	  if [ -f "$$f" ]; then cp "$$f" "$$tmp/tree/"; fi; \
	done; \
	tar -cf - --exclude=__pycache__ --exclude='*.egg-info' --exclude='*.pyc' src | tar -xf - -C "$$tmp/tree"; \
	echo "== pip wheel -> $$tmp/dist"; \
	"$$py" -m pip wheel -q --no-deps --no-build-isolation --no-input -w "$$tmp/dist" "$$tmp/tree"; \
	whl=$$(ls "$$tmp"/dist/icdistill-*.whl); \
	"$$py" -c 'import sys, zipfile; n = [f for f in zipfile.ZipFile(sys.argv[1]).namelist() if f.endswith((".yaml", ".yml"))]; print(f"{sys.argv[1]}: {len(n)} YAML configs"); assert any(f.startswith("icdistill/configs/demo/") for f in n), "no demo configs in the wheel"' "$$whl"; \
	"$$py" -m pip install -q --no-deps --no-input --target "$$tmp/site" "$$whl"; \
	cd "$$tmp/run"; \
	PYTHONPATH="$$tmp/site" "$$py" -c 'import sys, icdistill; f = icdistill.__file__; print(f"icdistill from {f}"); assert f.startswith(sys.argv[1]), f"icdistill imported from {f}, not from the wheel in {sys.argv[1]}"' "$$tmp/site/"; \
	echo "== icdistill demo --quick from the wheel (cwd $$tmp/run)"; \
	PYTHONPATH="$$tmp/site" "$$py" -m icdistill --no-progress demo --quick --out "$$tmp/out"; \
	test -s "$$tmp/out/results.md" || { echo "wheel-check: no results.md in $$tmp/out" >&2; exit 1; }; \
	test -s "$$tmp/out/compare.html" || { echo "wheel-check: no compare.html in $$tmp/out" >&2; exit 1; }; \
	echo "wheel-check: OK ($$(basename "$$whl"))"

clean:
	rm -rf $(VENV) $(DEMO_OUT) $(DEMO_OUT)-quick .pytest_cache
