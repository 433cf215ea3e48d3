# The two commands a new machine needs: `make demo` (the whole system, a model going through
# it) and `make test` (the test suite against real Kafka, PostgreSQL and S3).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo up test test-slow unit install schemas clean

demo: $(STAMP)
	$(VENV)/bin/modelreg demo

up: $(STAMP)
	$(VENV)/bin/modelreg up

test: $(STAMP)
	$(VENV)/bin/python -m pytest -p no:cacheprovider -m "not slow" $(PYTEST_ARGS)

# The long fault, soak and import scenarios (tests marked slow): about 30 minutes on 2 cores.
test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -p no:cacheprovider -m slow $(PYTEST_ARGS)

unit: $(STAMP)
	$(VENV)/bin/python -m pytest -p no:cacheprovider tests/unit

schemas: $(STAMP)
	$(VENV)/bin/modelreg schemas generate

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "modelreg needs Python 3.11 or newer"; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[stack,test,bench]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info
