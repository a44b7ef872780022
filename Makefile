# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[cpu,train,dev]"
	$(PY) -m pip install -q --no-deps -c constraints.txt open-clip-torch  # data file only: OpenAI's BPE vocabulary
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dsanet prepare-demo
	$(VENV)/bin/dsanet run $(ARGS)

# As root, the system packages the integration tests need are installed first; otherwise the last lines
# say which are missing (those tests skip; CI=true makes them fail).
# Two pytest-xdist workers (PYTEST_WORKERS=0: one process); tests/conftest.py says how the work is split.
PYTEST_WORKERS ?= 2
test: $(STAMP)
	@bash .ci/system-packages.sh --when-root
	bash .ci/triton-venv.sh
	@$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS); rc=$$?; \
		bash .ci/system-packages.sh --check-only; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
