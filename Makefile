# jianmu developer entry points. `make demo` and `make test` install into .venv first when needed.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
DEMO ?= demo

.PHONY: install demo test test-all lint format clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# The main job on a generated (synthetic, clearly labelled) sample:
# data -> audit -> split -> augmentation preview -> train -> evaluate -> export -> predict.
demo: install
	rm -rf $(DEMO)
	$(BIN)/jianmu data synth $(DEMO)/data --domain wood --classes 5 --per-class 40 --specimens 8 --seed 0
	$(BIN)/jianmu taxonomy check wood $(DEMO)/data
	$(BIN)/jianmu data check $(DEMO)/data --config configs/wood.yaml --json $(DEMO)/audit.json
	$(BIN)/jianmu data split $(DEMO)/data --config configs/wood.yaml --out $(DEMO)/manifest.csv
	$(BIN)/jianmu data preview configs/wood.yaml $(DEMO)/data --out $(DEMO)/preview.png
	$(BIN)/jianmu train configs/demo.yaml --data $(DEMO)/data --manifest $(DEMO)/manifest.csv \
		--out $(DEMO)/run --quiet
	$(BIN)/jianmu eval $(DEMO)/run --data $(DEMO)/data --manifest $(DEMO)/manifest.csv --split test \
		--out $(DEMO)/eval
	$(BIN)/jianmu export $(DEMO)/run --format onnx
	$(BIN)/jianmu export $(DEMO)/run --format onnx --int8
	$(BIN)/jianmu predict $(DEMO)/run/model.int8.onnx $(DEMO)/data/*/ --out $(DEMO)/predictions.csv \
		--html $(DEMO)/predictions.html
	@echo "demo outputs in $(DEMO)/: audit.json manifest.csv preview.png run/ eval/report.html" \
		"run/model.onnx run/model.int8.onnx predictions.csv predictions.html"

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check jianmu tests scripts datasets
	$(BIN)/ruff format --check jianmu tests scripts datasets

format: install
	$(BIN)/ruff check --fix jianmu tests scripts datasets
	$(BIN)/ruff format jianmu tests scripts datasets

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache build *.egg-info
