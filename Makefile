# `make demo` and `make test` each set up .venv themselves (pip; reused once made).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO := demo-out

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Synthetic data -> Ray Train (2 DDP workers) -> evaluation with PR curves and masks.
# 2 workers x 32 = the paper's global batch of 64. Its lr (2e-4) needs ~100 epochs;
# the demo trains 15 at 1e-3 (README, "Decisions").
demo: $(STAMP)
	$(VENV)/bin/hashgan-ray data synth --out $(DEMO)/data --pairs 3000 --seed 0 --overwrite
	$(VENV)/bin/hashgan-ray data info $(DEMO)/data
	rm -rf $(DEMO)/run
	$(VENV)/bin/hashgan-ray train --data $(DEMO)/data --out $(DEMO)/run --epochs 15 --workers 2 --batch-size 32 \
	    --bits 32 --lr 1e-3 --text-hidden 1024 --text-features 512 --val-database 500
	$(VENV)/bin/hashgan-ray eval --checkpoint $(DEMO)/run/model --data $(DEMO)/data \
	    --json $(DEMO)/eval.json --figures $(DEMO)/figures
	$(VENV)/bin/hashgan-ray index build --checkpoint $(DEMO)/run/model --data $(DEMO)/data \
	    --out $(DEMO)/index --overwrite
	$(PY) serve/demo.py --checkpoint $(DEMO)/run/model --index $(DEMO)/index --data $(DEMO)/data

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(DEMO) .pytest_cache
