# Two commands for a course user: `make lab` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The PyTorch release the course is tested with; override e.g. TORCH="torch torchvision" to take the newest.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
KERNEL := ddpm-course
STAMP  := $(VENV)/.installed

.PHONY: lab test unit notebooks student clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[course]"
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Diffusion course (ddpm_lib)" >/dev/null
	touch $(STAMP)

# JupyterLab refuses to start as root unless told; containers and Colab-like machines run as root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $(ROOT_FLAG)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --durations=15

unit: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m "not notebook"

notebooks: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m notebook

# Student versions of the lectures (solutions replaced by stubs) in build/student; see the README's Homework section.
student: $(STAMP)
	$(BIN)/python -m ddpm_lib.student notebooks build/student

clean:
	rm -rf $(VENV) build .pytest_cache
