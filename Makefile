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

clean:
	rm -rf runs
