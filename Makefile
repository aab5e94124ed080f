# Four computer-vision task packages, two environments.
#
#   make demo    build both venvs, make synthetic demo data, short train + predict of every task
#   make test    unit and end-to-end tests of common/ and every task (what CI runs)
#   make bench   benchmarks on real data: make bench DATA_ROOT=../shared/data
#
# Each task folder adds its own targets (train-<task>, predict-<task>, bench-<task>, demo-<task>,
# check-<task> = its pytest, demo-data-<task>) in <task>/task.mk, included below.
# Task short names: wood, minerals, ships, fcnn.

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
TEST_TORCH := common
# the TensorFlow venv also checks that common/ imports no framework there
TEST_TF := common/tests/test_demo_data.py::test_common_imports_no_framework

.PHONY: help setup venv-torch venv-tf demo-data demo test test-torch test-tf bench clean

help:
	@sed -n '2,9p' Makefile | sed 's/^# \{0,1\}//'

# ------------------------------------------------------------------------------------------------ venvs
# A venv is rebuilt from scratch when the content of one of its requirement files (or pyproject.toml)
# changes; the stamp holds a hash of that content, so a mere touch (git checkout) costs nothing.
# $(1) venv folder, $(2) its requirement files
define build_venv
	@hash=$$(cat $(2) pyproject.toml | sha256sum | cut -d' ' -f1); \
	if [ -f $(1)/.stamp ] && [ "$$(cat $(1)/.stamp)" = "$$hash" ]; then touch $(1)/.stamp; exit 0; fi; \
	echo "building $(1) from $(2)"; set -x; \
	rm -rf $(1); \
	$(PYTHON) -m venv $(1); \
	$(1)/bin/python -m pip install -q --disable-pip-version-check $(addprefix -r ,$(2)); \
	$(1)/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .; \
	echo "$$hash" > $(1)/.stamp
endef

$(TORCH_VENV)/.stamp: $(TORCH_REQS) pyproject.toml
	$(call build_venv,$(TORCH_VENV),$(TORCH_REQS))

$(TF_VENV)/.stamp: $(TF_REQS) pyproject.toml
	$(call build_venv,$(TF_VENV),$(TF_REQS))

venv-torch: $(TORCH_VENV)/.stamp
venv-tf: $(TF_VENV)/.stamp
setup: venv-torch venv-tf

# ------------------------------------------------------------------------------------------- task targets
# What every task has alike; a task.mk calls it: $(eval $(call task_rules,SHORT,PACKAGE,DATA_DIR,VENV,PY)).
#   check-SHORT      the package's tests in its venv (PYTEST_ARGS narrows them)
#   demo-data-SHORT  synthetic demo data in $(DATA_ROOT)/DATA_DIR, only where that folder is missing or empty
define task_rules
.PHONY: check-$(1) demo-data-$(1)
check-$(1): $(4)
	$$($(5)) -m pytest $(2) $$(PYTEST_ARGS) || [ $$$$? -eq 5 ]
demo-data-$(1): venv-torch
	$$(TORCH_PY) -m $(2).demo_data --out $$(DATA_ROOT)/$(3)
DEMO_DATA_TARGETS += demo-data-$(1)
endef

include $(sort $(wildcard */task.mk))

# ------------------------------------------------------------------------------------------- demo data
# Written only where data/<task>/ is missing or empty: user data is never overwritten. A task's own
# targets need only its own folder (demo-data-<task>, in its task.mk).
demo-data: $(DEMO_DATA_TARGETS)

demo: setup demo-data $(DEMO_TARGETS)
	@echo; echo "demo finished; outputs are under $(RUNS)/: wood_demo, minerals_demo, airbus_demo, fcnn_demo" \
	  "(each task's README says what is in them)"

# ------------------------------------------------------------------------------------------------ tests
# pytest exits 5 when a selection holds no test: that is not a failure here.
test: test-torch test-tf

test-torch: venv-torch
	$(TORCH_PY) -m pytest $(TEST_TORCH) $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-tf: venv-tf
	$(TF_PY) -m pytest $(TEST_TF) $(PYTEST_ARGS) || [ $$? -eq 5 ]

bench: $(addprefix bench-,$(TASKS))

clean:
	rm -rf $(TORCH_VENV) $(TF_VENV) $(RUNS) .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	@echo "data/ was left alone (it may hold your real data): remove it by hand if you mean to"
