# Two commands: `make lab` (open the notebooks) and `make test` (run every test).
# Both create the virtual environment .venv on first use and install everything into it, and
# .venv-pytriton, the environment notebook 09 starts PyTriton from.

SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is installed first and on its own, so that the project's range (>=2.13,<2.16)
# is already met and pip pulls no other build. Override for your machine, e.g.
#   make test TORCH="torch==2.13.0" TORCH_PIP_ARGS="--index-url <a CPU-only wheel index>"
TORCH          ?= torch==2.13.0
TORCH_PIP_ARGS ?=
NOTEBOOKS      := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

PYTRITON_VENV := .venv-pytriton

.PHONY: lab check test test-unit test-notebooks test-checkpoint notebooks protos bench clean-venv

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)" $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

# PyTriton needs numpy<2 and its own protobuf: an environment of its own (requirements-pytriton.txt).
$(PYTRITON_VENV)/bin/.installed: requirements-pytriton.txt
	test -x $(PYTRITON_VENV)/bin/python || $(PYTHON) -m venv $(PYTRITON_VENV)
	$(PYTRITON_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PYTRITON_VENV)/bin/python -m pip install --quiet "$(TORCH)" $(TORCH_PIP_ARGS)
	$(PYTRITON_VENV)/bin/python -m pip install --quiet -r requirements-pytriton.txt
	touch $@

.PHONY: $(PYTRITON_VENV)
$(PYTRITON_VENV): $(PYTRITON_VENV)/bin/.installed

ENVS := $(BIN)/.installed $(PYTRITON_VENV)/bin/.installed

# Jupyter refuses to run as root (the usual user in a container) unless told it may.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)

## lab: open JupyterLab on notebooks/ (creates .venv on first use)
lab: $(ENVS)
	cd notebooks && ../$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 $(ALLOW_ROOT)

## test: unit tests, strict nbval over every notebook, then the chat notebooks on another model
test: test-unit test-notebooks test-checkpoint

# Each stage prints how long it took.
define timed
	@start=$$(date +%s); $(1); status=$$?; \
	echo "== $@: $$(( $$(date +%s) - start )) s"; exit $$status
endef

## check: the tests that start no Ray and no browser (layout, configs, chat core, load generator, ...),
##   two at a time: the quick loop while editing (a few minutes)
check: $(BIN)/.installed
	$(call timed,$(BIN)/python -m pytest -q -n 2 -m "not ray" tests)

# The tests without Ray two at a time (as `make check`), then those with Ray one after the other.
test-unit: $(ENVS)
	$(call timed,$(BIN)/python -m pytest -q -n 2 -m "not ray" tests && \
	  REQUIRE_PYTRITON=1 $(BIN)/python -m pytest --durations=20 -m ray tests)

# Every notebook runs on its own, as a reader runs it: in a fresh HOME (no token or Jupyter
# state left by an earlier notebook) and a fresh Ray temp directory (no address file of an
# earlier cluster). $(call alone,COMMAND) runs COMMAND "$$nb" so for each notebook.
define alone
for nb in $(NOTEBOOKS); do \
  fresh=$$(mktemp -d) && mkdir -p $$fresh/home $$fresh/ray && \
  HOME=$$fresh/home RAY_TMPDIR=$$fresh/ray $(1) "$$nb"; \
  status=$$?; rm -rf $$fresh; [ $$status = 0 ] || exit $$status; \
done
endef

test-notebooks: $(ENVS)
	$(call timed,$(call alone,$(BIN)/python -m pytest --nbval -q))

# The apps must serve any local checkpoint: run the notebooks that serve the chat model with
# a second one (another architecture and chat template), every cell executed, none compared.
# A notebook takes part when its metadata says so: "serve_series": {"second_checkpoint": true}.
OTHER_MODEL := $(CURDIR)/assets/tiny-chat-qwen2
CHAT_NOTEBOOKS := $(shell grep -l '"second_checkpoint": true' $(NOTEBOOKS))
test-checkpoint: $(ENVS)
	$(call timed,SERVE_CHAT_MODEL=$(OTHER_MODEL) $(BIN)/python -m pytest --nbval-lax $(CHAT_NOTEBOOKS))

## notebooks: execute every notebook headless, each on its own, and save it with its outputs
##   (one notebook: make notebooks NOTEBOOKS=notebooks/03_yaml_config.ipynb)
notebooks: $(ENVS)
	$(call timed,$(call alone,$(CURDIR)/$(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=600))

## bench: the measurements of notebook 06 (batching, per-request cost, streaming, fast paths), as tables
bench: $(BIN)/.installed
	cd notebooks && ../$(BIN)/python -m bench && ../$(BIN)/python -m fastpaths

## protos: regenerate the gRPC stubs in notebooks/apps/protos from chat.proto
protos: $(BIN)/.installed
	$(BIN)/python -m grpc_tools.protoc -I notebooks --python_out=notebooks \
	  --pyi_out=notebooks --grpc_python_out=notebooks notebooks/apps/protos/chat.proto

clean-venv:
	rm -rf $(VENV) $(PYTRITON_VENV)
