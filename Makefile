# The README's two commands and the pieces they are made of, as make targets. Each one
# runs tasks.py, which needs only Python 3.10+ (no make, no root): it keeps everything in
# a virtual environment in .venv and installs the CPU build of torch where no NVIDIA GPU
# is present (see its docstring).
PYTHON ?= python3
PRESET ?= small
TASKS = $(PYTHON) tasks.py

.PHONY: setup book smoke-book test pytest browser student lab

setup:  ## .venv with torch, the package and its extras, and the HTML's assets
	$(TASKS) setup

book:  ## the main job: run every chapter at $(PRESET) and build the HTML in _build/html
	$(TASKS) book --preset $(PRESET)

smoke-book:  ## every chapter at the smoke preset (what CI builds)
	$(TASKS) smoke-book

test:  ## everything CI checks: the smoke book, then the tests
	$(TASKS) test

pytest:  ## only the tests
	$(TASKS) pytest

browser:  ## headless Chromium for the browser tests, where it can be installed
	$(TASKS) browser

student:  ## the reader and student copies of the chapters, in colab/
	$(TASKS) student

lab:  ## JupyterLab on the chapters, in .venv
	$(TASKS) lab
