# Everything a user or CI needs; `make test` and `make train` work on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
L2L := $(VENV)/bin/l2l
CONSTRAINTS := requirements/constraints.txt

.PHONY: install data train test test-fast lint docs bench results tensorboard clean

install: $(VENV)/.installed

# Bytecode is compiled by compileall on every core instead of by pip on one (an environment may forbid writing it at
# import time: PYTHONDONTWRITEBYTECODE); files a package ships that are not Python 3 are skipped, as pip skips them.
$(VENV)/.installed: setup.cfg pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --no-compile -c $(CONSTRAINTS) -e '.[dev]'
	# real sample images (ImageNet photos, CIFAR-10 test images) read from its files; its own dependencies unneeded
	$(PY) -m pip install -q --no-compile --no-deps -c $(CONSTRAINTS) foolbox
	$(PY) -m compileall -q -j 0 $(VENV)/lib >/dev/null 2>&1 || true
	touch $@

data:  ## as root: the offline datasets l2l reads where installed (Fashion-MNIST for optimizee=convnet)
	scripts/install_data.sh

train: install  ## meta-train on quadratics with the shipped defaults, then evaluate against tuned baselines
	$(L2L) train optimizee=quadratic

test: install  ## the whole suite (CI runs this)
	$(PY) -m pytest -q

test-fast: install  ## without the end-to-end CLI tests
	$(PY) -m pytest -q -m "not slow"

lint: install  ## ruff, and the layer contracts of .importlinter (a wrong-way import or an import circle fails)
	$(VENV)/bin/ruff check l2l_cli tests benchmarks examples
	$(VENV)/bin/lint-imports --no-cache

docs: install  ## the user guide (docs/) as a site in site/; a broken link or missing page fails
	$(VENV)/bin/mkdocs build --strict --site-dir site

results: install  ## re-run every experiment's evaluation from its shipped checkpoint; rebuild docs/results/
	$(L2L) report --out docs/results

bench: install  ## speed figures, printed and written to benchmarks/results/
	$(PY) benchmarks/speed.py
	$(PY) benchmarks/side_by_side.py

tensorboard: install
	$(VENV)/bin/tensorboard --logdir outputs --host 127.0.0.1

clean:
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
	rm -rf .pytest_cache build dist *.egg-info site
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
