# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[cpu,train,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dsanet prepare-demo
	$(VENV)/bin/dsanet run $(ARGS)

# As root, the system packages the integration tests need are installed first; otherwise the last lines
# say which are missing (those tests skip; CI=true makes them fail).
test: $(STAMP)
	@bash .ci/system-packages.sh --when-root
	@$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; bash .ci/system-packages.sh --check-only; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
