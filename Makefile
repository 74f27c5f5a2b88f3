# The two commands of the README, and the pieces they are made of.
PYTHON ?= python3
PRESET ?= small

.PHONY: setup setup-browser book test smoke-book pytest student

setup:  ## torch (CPU build unless one is installed), then the package with extras
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[book,test]"

setup-browser:  ## headless Chromium for the HTML tests (Debian package)
	@command -v chromium >/dev/null || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

book: setup  ## the main job: run every chapter at $(PRESET) and build the HTML
	$(PYTHON) -m twotower.book build --preset $(PRESET)

smoke-book: setup
	$(PYTHON) -m twotower.book build --preset smoke

pytest:
	$(PYTHON) -m pytest -q

test: setup setup-browser smoke-book pytest  ## everything CI checks

student: setup  ## student copies of the chapters (solutions dropped) in student/
	$(PYTHON) -m twotower.book student --out student
