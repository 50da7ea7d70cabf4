# make run   - create .venv with the pinned set (constraints.txt) and run the main job on a local Ray
# make test  - create .venv with the pinned set and run the test suite
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.fmgnn-installed

.PHONY: run test clean-venv

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: an unpinned resolve would pull the newest CUDA build.
	$(VENV)/bin/pip install -c constraints.txt torch==2.13.0
	$(VENV)/bin/pip install -c constraints.txt -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/fmgnn run

test: $(STAMP)
	$(VENV)/bin/python -m pytest

clean-venv:
	rm -rf $(VENV)
