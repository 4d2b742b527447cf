# Two commands on a fresh machine:
#   make demo   set up, then preprocess + train + evaluate + report on the bundled sample
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN ?= runs/sample
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup demo test bench clean

$(BIN)/activate: setup.py requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/activate

setup: $(BIN)/activate

demo: setup
	$(BIN)/python -m pipelines.preprocess --data-dir data/sample --output-dir $(RUN)/data --overwrite
	$(BIN)/python -m trainer.task --data-dir $(RUN)/data --job-dir $(RUN)/job --verbose 2
	$(BIN)/python -m trainer.evaluate --data-dir $(RUN)/data --job-dir $(RUN)/job --split test
	$(BIN)/python -m trainer.predict --model-dir $(RUN)/job --top-k 3 $$(ls data/sample/yes/*.wav | head -n 2) data/sample/no/$$(ls data/sample/no | head -n 1)
	@echo
	@echo "Report: $(RUN)/job/report.html"

test: setup
	$(BIN)/python -m pytest -q tests

# Benchmarks on the 2,699-clip subset (unzipped from SUBSET_ZIP); figures go in the README.
# About an hour on 2 cores (six training runs of the comparison).
# The default model mixes in the _background_noise_ recordings of EXTRA_ZIP.
SUBSET_ZIP ?= ../shared/data/speech_commands_subset.zip
EXTRA_ZIP ?= ../shared/data/speech_commands_extra.zip
BENCH ?= runs/bench
bench: setup
	@if [ -e $(BENCH) ]; then echo "error: $(BENCH) exists: remove it (make clean) or set BENCH=another/folder" >&2; exit 2; fi
	mkdir -p $(BENCH) && unzip -q $(SUBSET_ZIP) -d $(BENCH)
	$(BIN)/python -m benchmarks.preprocess --data-dir $(BENCH)/speech_commands_subset --work-dir $(BENCH)/prep
	unzip -q $(EXTRA_ZIP) 'speech_commands_extra/_background_noise_/*' -d $(BENCH)
	mv $(BENCH)/speech_commands_extra/_background_noise_ $(BENCH)/speech_commands_subset/
	$(BIN)/python -m pipelines.preprocess --data-dir $(BENCH)/speech_commands_subset --output-dir $(BENCH)/data
	$(BIN)/python -m benchmarks.compare --data-dir $(BENCH)/data --work-dir $(BENCH)/compare --models kws tutorial --seeds 42 1 2 --reference
	$(BIN)/python -m benchmarks.training --data-dir $(BENCH)/data --job-dir $(BENCH)/compare/tutorial-seed42 --job-dir $(BENCH)/compare/kws-seed42

# Removes the folders that demo and bench write, nothing else.
clean:
	rm -rf $(RUN) $(BENCH)
