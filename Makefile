# The two commands of the README:
#   make demo   set up, generate the sample set, preprocess -> train -> inference -> evaluation (prints the F1)
#   make test   set up and run the test suite (make test-fast: without the slow end-to-end tests)
#   make pictures   after make demo: docs/*.png, the demo run's pictures that README.md embeds
# Both create .venv from requirements.txt on first use (torch from PyPI: a few minutes, ~6 GB).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= data
DEMO_RUN ?= model/demo
DEMO_TRAINING ?= --epochs 5  # train.py's defaults (docs/defaults.md), three epochs fewer: the demo in under 3 minutes

.PHONY: demo test test-fast pictures setup browser clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

demo: setup
	$(BIN)/python generate_sample.py --out $(DATA) --people 100 --eval_people 30 --overwrite
	SM_CHANNEL_TRAIN=$(DATA)/train/images $(BIN)/python preprocess.py
	rm -rf $(DEMO_RUN)
	SM_CHANNEL_TRAIN=$(DATA)/train/images SM_MODEL_DIR=$(dir $(DEMO_RUN)) \
		$(BIN)/python train.py --name $(notdir $(DEMO_RUN)) $(DEMO_TRAINING)
	SM_CHANNEL_EVAL=$(DATA)/eval SM_CHANNEL_MODEL=$(DEMO_RUN) SM_OUTPUT_DATA_DIR=output $(BIN)/python inference.py
	SM_GROUND_TRUTH_DIR=$(DATA)/gt SM_OUTPUT_DATA_DIR=output $(BIN)/python evaluation.py

pictures: setup
	SM_GROUND_TRUTH_DIR=$(DATA)/gt SM_CHANNEL_EVAL=$(DATA)/eval SM_OUTPUT_DATA_DIR=output \
		$(BIN)/python evaluation.py --report output/report --mistakes 4
	mkdir -p docs
	cp $(DEMO_RUN)/curves.png output/report/confusion_tasks.png output/report/mistakes.png docs/

# The browser tests' Chromium: Debian's package, installed where apt-get can (as root); never fails the build, the
# tests skip saying why where it is missing
browser:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null \
		&& (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; } \
		|| echo "chromium is not installed: tests/test_serve_browser.py will be skipped"

# -n auto: the tests spread over the cores (pytest-xdist), a module's tests on one worker (--dist loadfile: its
# fixtures are built once); the 20 slowest are listed at the end
test: setup browser
	$(BIN)/python real_assets.py
	$(BIN)/python -m pytest tests -q -n auto --dist loadfile --durations=20

test-fast: setup
	$(BIN)/python real_assets.py
	$(BIN)/python -m pytest tests -q -n auto --dist loadfile -m "not slow"

clean:
	rm -rf $(DATA) model output
