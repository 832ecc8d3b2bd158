# Thin wrappers around the `pglab` toolkit. Needs only Python >= 3.10 and make.
# Every target is idempotent: run it as often as you like.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
# JupyterLab refuses to run as root unless told so (containers, CI).
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: setup lab test check progress grade bench db-up db-down clean help

help:
	@echo "make lab        set up, start PostgreSQL, open JupyterLab at tutorial 00 (ARGS=--no-browser for headless)"
	@echo "make test       set up, then run every check against the reference solutions, notebooks included"
	@echo "make check      run the checks of your current lab (LAB=01 for a given lab)"
	@echo "make grade      grade a learner's repository: make grade SUBMISSION=path/to/repo"
	@echo "make bench      run the benchmark harness; results in bench-results/"
	@echo "make db-up / db-down   start / stop the course's PostgreSQL server"

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("Python >= 3.10 is needed, found " + sys.version.split()[0]) if sys.version_info < (3, 10) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

setup: $(STAMP)

db-up: setup
	$(BIN)/pglab db up

db-down: setup
	$(BIN)/pglab db down

lab: db-up
	$(BIN)/pglab progress
	$(BIN)/jupyter lab --ServerApp.root_dir=. $(ROOT_FLAG) $(ARGS) tutorials/00-why-pooling.ipynb

test: db-up
	$(BIN)/pytest --nbmake tests tutorials workshops

check: setup
	$(BIN)/pglab check $(LAB)

progress: setup
	$(BIN)/pglab progress

grade: setup
	@test -n "$(SUBMISSION)" || (echo "usage: make grade SUBMISSION=path/to/learner/repo" && exit 2)
	$(BIN)/pglab grade --submission "$(SUBMISSION)" $(ARGS)

bench: db-up
	$(BIN)/pglab bench --out bench-results $(ARGS)

clean: setup
	-$(BIN)/pglab db down
	rm -rf .pglab $(VENV)
