# Four computer-vision task packages, two environments. `make help` lists every target.
# Each task folder adds its own targets in <task>/task.mk (included below); task short names: wood,
# minerals, ships, fcnn. A target's help line is the `## ...` comment on its rule line.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
# where data/<task>/ folders live: demo data by default, e.g. DATA_ROOT=../shared/data for the real sets
DATA_ROOT ?= data
# where training runs write checkpoints, logs and plots
RUNS ?= runs
# extra arguments for pytest, e.g. make test PYTEST_ARGS="-k tiling -x"
PYTEST_ARGS ?=

TORCH_VENV := .venv-torch
TF_VENV := .venv-tf
TORCH_PY := $(abspath $(TORCH_VENV))/bin/python
TF_PY := $(abspath $(TF_VENV))/bin/python
TORCH_REQS := common/requirements.txt fcnn_rgb_gt/requirements.txt minerals/requirements.txt \
              wood_anomaly/requirements.txt requirements-dev.txt
TF_REQS := common/requirements.txt airbus_ships/requirements.txt requirements-dev.txt
export PYTHONUNBUFFERED := 1

TASKS := wood minerals ships fcnn
DEMO_TARGETS :=
DEMO_DATA_TARGETS :=
TEST_TORCH := common tools
# the TensorFlow venv also checks that common/ imports no framework there
TEST_TF := common/tests/test_demo.py::test_common_imports_no_framework

FIGURE_TARGETS :=

.PHONY: help setup venv-torch venv-tf demo-data demo test test-torch test-tf test-fast lint figures check-docs bench clean

help:  ## this list
	@echo "usage: make TARGET [DATA_ROOT=data] [RUNS=runs] [PYTEST_ARGS=...]"
	@sed -E 's/\$$\(1\)/<task>/g; s/\$$\$$/$$/g' $(MAKEFILE_LIST) | grep -E '^[a-zA-Z0-9_<>-]+:.*## ' | \
	  sed -E 's/^([^:]+):.*## (.*)/\1|\2/' | awk -F'|' '{printf "  %-20s %s\n", $$1, $$2}'

# ------------------------------------------------------------------------------------------------ venvs
# A venv is rebuilt from scratch when the content of one of its requirement files or of pyproject.toml's
# packaging sections changes (the [tool.ruff] and [tool.pytest] settings do not count); the stamp holds a hash
# of that content, so a mere touch (git checkout) costs nothing. pip prints each package as it goes.
# $(1) venv folder, $(2) its requirement files
VENV_HASH = (cat $(2); awk '/^\[/ { skip = /^\[tool\.(ruff|pytest)/ } !skip' pyproject.toml) | sha256sum | cut -d' ' -f1
define build_venv
	@hash=$$( $(VENV_HASH)); \
	if [ -f $(1)/.stamp ] && [ "$$(cat $(1)/.stamp)" = "$$hash" ]; then touch $(1)/.stamp; exit 0; fi; \
	echo "building $(1) from $(2): a few minutes on 2 cores, several GB of wheels"; \
	rm -rf $(1); \
	$(PYTHON) -m venv $(1); \
	$(1)/bin/python -m pip install --disable-pip-version-check --progress-bar on $(addprefix -r ,$(2)) \
	  | { grep --line-buffered -E '^(Collecting|Installing|Successfully)' || true; }; \
	$(1)/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .; \
	echo "$$hash" > $(1)/.stamp; echo "$(1) ready"
endef

$(TORCH_VENV)/.stamp: $(TORCH_REQS) pyproject.toml
	$(call build_venv,$(TORCH_VENV),$(TORCH_REQS))

$(TF_VENV)/.stamp: $(TF_REQS) pyproject.toml
	$(call build_venv,$(TF_VENV),$(TF_REQS))

venv-torch: $(TORCH_VENV)/.stamp
venv-tf: $(TF_VENV)/.stamp
setup: venv-torch venv-tf  ## build both virtualenvs (.venv-torch, .venv-tf) from the pinned requirement files

# ------------------------------------------------------------------------------------------- task targets
# What every task has alike; a task.mk calls it: $(eval $(call task_rules,SHORT,PACKAGE,DATA_DIR,VENV,PY)).
#   check-SHORT      the package's tests in its venv (PYTEST_ARGS narrows them)
#   demo-data-SHORT  synthetic demo data in $(DATA_ROOT)/DATA_DIR, only where that folder is missing or empty
define task_rules
.PHONY: check-$(1) demo-data-$(1)
check-$(1): $(4)  ## this task's tests only (PYTEST_ARGS="-k name -x" narrows)
	$$($(5)) -m pytest $(2) $$(PYTEST_ARGS) || [ $$$$? -eq 5 ]
demo-data-$(1): venv-torch  ## synthetic demo data in $$(DATA_ROOT)/<task>/ when that folder is empty
	$$(TORCH_PY) -m $(2).demo_data --out $$(DATA_ROOT)/$(3)
DEMO_DATA_TARGETS += demo-data-$(1)
endef

include $(sort $(wildcard */task.mk))

# ------------------------------------------------------------------------------------------- demo data
# Written only where data/<task>/ is missing or empty: user data is never overwritten. A task's own
# targets need only its own folder (demo-data-<task>, in its task.mk).
demo-data: $(DEMO_DATA_TARGETS)  ## synthetic demo data for every task where data/<task>/ is empty

demo: setup demo-data $(DEMO_TARGETS)  ## build the venvs, write demo data, short train + predict of every task
	@echo; echo "demo finished; outputs are under $(RUNS)/: wood_demo, minerals_demo, airbus_demo, fcnn_demo" \
	  "(each task's README says what is in them)"

# ------------------------------------------------------------------------------------------------ tests
# pytest exits 5 when a selection holds no test: that is not a failure here.
test: lint test-torch test-tf  ## lint, then every test of both venvs (what CI runs)

test-torch: venv-torch  ## the tests of common/ and the PyTorch tasks
	$(TORCH_PY) -m pytest $(TEST_TORCH) $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-tf: venv-tf  ## the tests of airbus_ships (TensorFlow venv)
	$(TF_PY) -m pytest $(TEST_TF) $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-fast: venv-torch venv-tf  ## unit tests only (no training, no processes, no notebooks): under 2 minutes
	$(TORCH_PY) -m pytest -q -m "not slow" $(TEST_TORCH) $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(TF_PY) -m pytest -q -m "not slow" $(TEST_TF) $(PYTEST_ARGS) || [ $$? -eq 5 ]

lint: venv-torch  ## ruff over the tree (rules in pyproject.toml)
	$(abspath $(TORCH_VENV))/bin/ruff check .

figures: $(FIGURE_TARGETS)  ## every task's README figures into <task>/docs/

check-docs: demo  ## run the commands the READMEs document, as a new user would after make demo
	$(PYTHON) tools/check_docs.py

bench: $(addprefix bench-,$(TASKS))  ## every benchmark on real data: make bench DATA_ROOT=../shared/data

clean:  ## remove venvs, runs and caches (never data/)
	rm -rf $(TORCH_VENV) $(TF_VENV) $(RUNS) .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	@echo "data/ was left alone (it may hold your real data): remove it by hand if you mean to"
