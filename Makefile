# Two commands on a fresh machine:
#   make demo   set up, then preprocess + train + evaluate + report on the bundled sample,
#               and detection with the ready detector in models/ on a recording made from it
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN ?= runs/sample
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup demo test bench clean detector live browser

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
	rm -f $(RUN)/long.wav $(RUN)/long.csv   # the demo's own recording of an earlier run
	$(BIN)/python -m trainer.calibrate recording --data-dir $(RUN)/data --split test --seconds 120 --output $(RUN)/long.wav
	$(BIN)/python -m trainer.detect $(RUN)/long.wav --truth $(RUN)/long.csv --plot $(RUN)/long.png
	@echo
	@echo "Report: $(RUN)/job/report.html"

test: setup live/node_modules browser
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

# The live page's JavaScript (LiteRT.js), from the npm registry, as live/package-lock.json pins it.
live/node_modules: live/package.json live/package-lock.json
	npm ci --prefix live --no-audit --no-fund --loglevel=error
	touch live/node_modules

# Debian's Chromium, which the page's tests drive (Playwright's own browser download is
# not used). Installed with apt-get where this runs as root; else a line says what to do.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the page's tests"; \
	    (apt-get install -y -qq chromium >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)); \
	  else echo "note: no chromium: install Debian's chromium package (sudo apt-get install" \
	    "chromium); the page's tests fail without it" >&2; fi

# The live page and streaming server on a job (default: the detector in models/).
JOB ?= models/speech-commands
live: setup live/node_modules
	$(BIN)/python -m trainer.live --model-dir $(JOB)

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

# The recommended keyword detector, from DATA: a folder of label folders with _unknown_
# (other words) and _background_noise_. Synthetic confusable words, preprocessing,
# training, hard-negative mining, the operating point on an hour of val recordings; the
# job ends in WORK/job, the preprocessing run in WORK/data. Each step's output is kept, so
# a stopped run started again goes on from the last finished step.
KEYWORDS ?= down,go,left,no,right,stop,up,yes
WORK ?= runs/detector
SEED ?= 42
SYNTH_FLAGS ?= --per-keyword 20 --ordinary 200 --voices-per-word 8
PREPROCESS_FLAGS ?= --unknown-percent 150 --silence-percent 10
TRAIN_FLAGS ?= --epochs 80 --max-shift-ms 300 --calibration-minutes 60
MINE_FLAGS ?= --rounds 1 --minutes 60 --epochs 15 --calibration-minutes 60
detector: setup
	@if [ -z "$(DATA)" ]; then echo "error: give DATA=DIR, a folder of label folders with" \
	    "_unknown_ and _background_noise_ (e.g. make detector DATA=data/speech WORK=runs/det)" >&2; \
	    exit 2; fi
	@$(MAKE) --no-print-directory $(WORK)/job/metrics.json
	@echo
	@echo "Detector: $(WORK)/job (report: $(WORK)/job/report.html)"

$(WORK)/synthetic.done:
	$(BIN)/python -m pipelines.synthesize --confusable-with $(KEYWORDS) $(SYNTH_FLAGS) \
	    --output $(WORK)/synthetic/_unknown_ --overwrite
	touch $@

$(WORK)/data/metadata.json: $(WORK)/synthetic.done
	$(BIN)/python -m pipelines.preprocess --data-dir $(DATA) --data-dir $(WORK)/synthetic \
	    --output-dir $(WORK)/data --labels $(KEYWORDS) $(PREPROCESS_FLAGS) --overwrite

$(WORK)/base/metrics.json: $(WORK)/data/metadata.json
	$(BIN)/python -m trainer.task --data-dir $(WORK)/data --job-dir $(WORK)/base \
	    --seed $(SEED) --verbose 2 $(TRAIN_FLAGS)

$(WORK)/job/metrics.json: $(WORK)/base/metrics.json
	$(BIN)/python -m trainer.mine --base-job $(WORK)/base --data-dir $(WORK)/data \
	    --job-dir $(WORK)/job --seed $(SEED) $(MINE_FLAGS)

# Removes the folders that demo and bench write, nothing else.
clean:
	rm -rf $(RUN) $(BENCH)
