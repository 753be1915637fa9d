# The two commands of README.md. Everything is installed into .venv on first use.
VENV ?= .venv
PYTHON ?= python3
# CPU build by default (a file on this disk here; ~200 MB from PyPI elsewhere).
# With a GPU: make TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu126"
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.installed

.PHONY: run test install check-wheel clean-db

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(VENV)/bin/python -m pip install --quiet -e ".[test,bench,spark]"
	touch $@

install: $(STAMP)

run: $(STAMP)  ## the main job: embedded Postgres, synthetic shop, features, Feast, online lookup
	$(VENV)/bin/interest run

test: $(STAMP)  ## the test suite (real Postgres, Feast, models on small data)
	$(VENV)/bin/python -m pytest -q

check-wheel:  ## build the wheel, install it in a fresh venv outside the checkout, run init/status/pipeline
	PYTHON=$(PYTHON) TORCH_SPEC="$(TORCH_SPEC)" bash .ci/check_wheel.sh

clean-db:  ## stop the embedded server and delete its data
	-$(VENV)/bin/interest stop
	rm -rf .pgdata
