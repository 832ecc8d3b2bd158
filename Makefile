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
# Fast path: a venv without pip (ensurepip alone takes seconds), uv put into it by this Python's
# own pip, then uv installs the requirements and pip itself (for `make mutation` and `%pip`).
# Fallback: the venv's own pip (ensurepip), several times slower.
UV  := uv==0.13.8
PIP := pip==26.3
PIP_INSTALL := --quiet --disable-pip-version-check

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python >= 3.11 is needed, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv --without-pip $(VENV)
	test -x $(BIN)/uv || $(PYTHON) -m pip --python $(BIN)/python install $(PIP_INSTALL) $(UV) \
	  || echo "uv could not be installed: installing with pip instead (slower)"
	if [ -x $(BIN)/uv ] && $(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements.txt $(PIP); then :; \
	else $(BIN)/python -m pip --version >/dev/null 2>&1 || $(BIN)/python -m ensurepip --default-pip; \
	  $(BIN)/python -m pip install $(PIP_INSTALL) -r requirements.txt; fi
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
# PostgreSQL starts while JupyterLab does (each takes seconds); a notebook that asks for the
# database first just waits for it (the server's start is locked).
lab: setup
	@printf '%s\n' '[ -f ~/.bashrc ] && . ~/.bashrc' \
	  'export VIRTUAL_ENV="$(abspath $(VENV))" PATH="$(abspath $(BIN)):$$PATH"' > "$(TERMINAL_RC)"
	{ $(BIN)/pglab db up || { echo "make lab: PostgreSQL did not start (the reason is above); fix it, then: make db-up"; \
	  exit 1; }; $(BIN)/pglab progress; } & \
	PATH="$(abspath $(BIN)):$$PATH" VIRTUAL_ENV="$(abspath $(VENV))" PGLAB_TARGET=labs \
	  exec $(BIN)/jupyter lab --ServerApp.root_dir=. $(ROOT_FLAG) $(JUPYTER_TERMINAL) $(ARGS) tutorials/00-why-pooling.ipynb

# Test files run on TEST_JOBS workers (pytest-xdist), each file whole on one worker: most checks
# wait on the server, not the CPU, so 3 workers halve the time even on 2 cores. TEST_JOBS=0: serial.
# A notebook's kernel is given five free ports that it binds only once it has started; amid the
# checks' connections another process can take one first (ZMQError: Address already in use) and
# the kernel never answers. Only that, a kernel that did not start, is run again (twice at most,
# shown as R); a failing cell or check never is.
TEST_JOBS ?= 3
RERUN_KERNEL_START := --reruns 2 --only-rerun "Kernel didn't respond"
test: db-up
	$(BIN)/pytest --nbmake -n $(TEST_JOBS) --dist loadfile $(RERUN_KERNEL_START) tests tutorials workshops $(ARGS)

check: setup
	$(BIN)/pglab check $(LAB)

progress: setup
	$(BIN)/pglab progress

grade: setup
	@test -n "$(SUBMISSION)" || (echo "usage: make grade SUBMISSION=path/to/learner/repo" && exit 2)
	$(BIN)/pglab grade --submission "$(SUBMISSION)" $(ARGS)

mutation: db-up
	$(BIN)/python -m pip install $(PIP_INSTALL) -r requirements-mutation.txt
	$(BIN)/pglab mutation --out mutation-results $(ARGS)

bench: db-up
	$(BIN)/pglab bench --out bench-results $(ARGS)

clean: setup
	-$(BIN)/pglab db down
	rm -rf .pglab $(VENV)
