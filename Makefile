# Thin wrappers around the `pglab` toolkit. Needs only Python >= 3.11 and make.
# Every target is idempotent: run it as often as you like.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
# JupyterLab refuses to run as root unless told so (containers, CI).
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
# JupyterLab's terminals: bash reads ~/.bashrc, then this file puts the course's .venv first on
# PATH (a login shell would reset PATH from /etc/profile, a ~/.bashrc may put pyenv's first).
TERMINAL_RC := $(abspath $(VENV))/terminal.bashrc
JUPYTER_TERMINAL := --ServerApp.terminado_settings='{"shell_command": ["bash", "--rcfile", "$(TERMINAL_RC)", "-i"]}'

.PHONY: setup git-filter lab test check progress grade bench mutation db-up db-down clean help

help:
	@echo "make lab        set up, start PostgreSQL, open JupyterLab at tutorial 00 (ARGS=--no-browser for headless)"
	@echo "make test       set up, then run every check against the reference solutions, notebooks included"
	@echo "make check      run the checks of your current lab (LAB=01 for a given lab)"
	@echo "make grade      grade a learner's repository: make grade SUBMISSION=path/to/repo"
	@echo "make mutation   course authors: automatic mutation run over the solution regions (long; not in CI)"
	@echo "make bench      run the benchmark harness; results in bench-results/"
	@echo "make db-up / db-down   start / stop the course's PostgreSQL server"
	@echo "make setup      only install .venv (uv, else pip) and the git filter that keeps notebook outputs out of git"

# uv installs the pinned set in seconds; pip is the fallback wherever uv cannot be had.
UV := uv==0.13.8

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("Python >= 3.11 is needed, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	{ $(BIN)/python -m pip install --quiet --disable-pip-version-check $(UV) \
	  && $(BIN)/python -m uv pip install --quiet --python $(BIN)/python -r requirements.txt; } \
	|| $(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(MAKE) --no-print-directory git-filter
	touch $(STAMP)

setup: $(STAMP)

# Notebook outputs never enter git: a clean filter of this clone (nbstripout, cell ids kept)
# strips them whenever git reads a notebook, while your working copy keeps them.
# Set in .git/config and .git/info/attributes only; skipped unless this folder is a git clone's top.
# The index is refreshed first, while no filter is set: else git would filter every notebook
# checked out in the same second as the index (racy entries) on the next `git status`.
NBSTRIP := "$(abspath $(BIN))/python" -m nbstripout --keep-id
git-filter:
	@if [ "$$(git rev-parse --show-toplevel 2>/dev/null)" = "$(CURDIR)" ]; then \
	  git update-index -q --refresh; \
	  git config filter.nbstripout.clean '$(NBSTRIP)' && git config filter.nbstripout.smudge cat && \
	  git config diff.ipynb.textconv '$(NBSTRIP) -t' && \
	  attributes="$$(git rev-parse --git-path info/attributes)" && mkdir -p "$$(dirname "$$attributes")" && \
	  { grep -qs 'filter=nbstripout' "$$attributes" || echo '*.ipynb filter=nbstripout diff=ipynb' >> "$$attributes"; } && \
	  echo "git: notebook outputs are stripped on commit (nbstripout filter of this clone)"; fi

db-up: setup
	$(BIN)/pglab db up

db-down: setup
	$(BIN)/pglab db down

# JupyterLab's terminals inherit this environment: the course's .venv first on PATH, so
# `pglab` and `python` there are the course's. PGLAB_TARGET=labs: notebooks load your labs/.
lab: db-up
	$(BIN)/pglab progress
	@printf '%s\n' '[ -f ~/.bashrc ] && . ~/.bashrc' \
	  'export VIRTUAL_ENV="$(abspath $(VENV))" PATH="$(abspath $(BIN)):$$PATH"' > "$(TERMINAL_RC)"
	PATH="$(abspath $(BIN)):$$PATH" VIRTUAL_ENV="$(abspath $(VENV))" PGLAB_TARGET=labs \
	  $(BIN)/jupyter lab --ServerApp.root_dir=. $(ROOT_FLAG) $(JUPYTER_TERMINAL) $(ARGS) tutorials/00-why-pooling.ipynb

test: db-up
	$(BIN)/pytest --nbmake tests tutorials workshops $(ARGS)

check: setup
	$(BIN)/pglab check $(LAB)

progress: setup
	$(BIN)/pglab progress

grade: setup
	@test -n "$(SUBMISSION)" || (echo "usage: make grade SUBMISSION=path/to/learner/repo" && exit 2)
	$(BIN)/pglab grade --submission "$(SUBMISSION)" $(ARGS)

mutation: db-up
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-mutation.txt
	$(BIN)/pglab mutation --out mutation-results $(ARGS)

bench: db-up
	$(BIN)/pglab bench --out bench-results $(ARGS)

clean: setup
	-$(BIN)/pglab db down
	rm -rf .pglab $(VENV)
