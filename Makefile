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

# ---------------------------------------------------------------------------------------------------
# The shipped models and the GPU results that notebooks 06–09 show. A GPU session runs `make results`
# (or one group: results-ddpm, results-ddim, results-guidance, results-ddgan, results-bench). Each file
# is made once: the models are order-only prerequisites (after `|`), so a result is not made again because
# a copy gave its model a newer time stamp. A training run stopped by a time limit (SIGTERM saves a
# checkpoint) resumes on the next call on the same machine. Small settings for a CPU rehearsal (T = 100
# and these DDIM steps let notebooks/rehearse.sh run 07):
# `make results RESULTS_SCALE=smoke T=100 DDIM_STEPS="10 20 50 100" R=/tmp/r RUNS=/tmp/r/runs`.
R        ?= data
N_TRI   ?= $(N_TABLE)
RUNS     ?= runs
DL       ?= $(BIN)/python -m ddpm_lib
RESULTS_SCALE ?= gpu
ifeq ($(RESULTS_SCALE),smoke)
PRESET := tiny
NC_PRESET := tiny
DDGAN_PRESET := tiny
T      := 30
DDPM_STEPS := 6
CFG_STEPS := 6
NC_STEPS := 6
DDGAN_STEPS := 6
BATCH  := 8
N_EVAL := 10
N_TABLE := 10
N_PER_CLASS := 2
DDIM_STEPS := 5 30
EVERY  := 3
GRID   := 4
GSTEPS := 10
N_GRID := 1
TRI_STEPS := 5 4
EVAL_FLAGS :=
COMPILE_EVAL :=
COMPILE :=
BENCH  := --batch-size 4 --sample-batch 4 --iters 2 --warmup 1 --ddim-steps 2 --compile-backend eager
BENCH_PRESETS := tiny
else ifeq ($(RESULTS_SCALE),laptop)
# A stand-in made on a 2-core laptop CPU in about three and a half hours, for the lectures to run before the GPU run:
# the tiny U-Net, a short run, few samples. Its numbers are the laptop's, not the GPU's (README).
PRESET := tiny
NC_PRESET := tiny
DDGAN_PRESET := tiny
T      := 1000
DDPM_STEPS := 6000
CFG_STEPS := 6000
NC_STEPS := 1000
DDGAN_STEPS := 8000
BATCH  := 64
TRAIN_EXTRA := --lr 5e-4 --warmup 200
NC_EXTRA := --batch-size 64
N_EVAL := 200
N_TABLE := 200
N_TRI  := 200
EVAL_SAMPLER := --sampler ddim --steps 100
N_PER_CLASS := 10
DDIM_STEPS := 10 20 50 100 1000
EVERY  := 800
GRID   := 16
GSTEPS := 50
N_GRID := 4
TRI_STEPS := 50 4
EVAL_FLAGS :=
COMPILE_EVAL :=
COMPILE :=
BENCH  := --batch-size 64 --sample-batch 64 --iters 3 --warmup 1 --ddim-steps 2 --compile-backend eager
BENCH_PRESETS := tiny
else
PRESET := mnist
NC_PRESET := mnist
DDGAN_PRESET := mnist
T      := 1000
DDPM_STEPS := 20000
CFG_STEPS := 20000
NC_STEPS := 5000
DDGAN_STEPS := 6000
BATCH  := 128
# Sized to fit the device tool's 30 minutes (README, "Shipped models and GPU results": the work of each file).
# The model's FID-MNIST on 10,000 samples uses DDIM-100 (3.1 PFLOP, a tenth of the 1,000-step sampler's 31); the
# 1,000-step sampler is scored in the DDIM table and the trilemma, on 2,000 samples each.
N_EVAL := 10000
EVAL_SAMPLER := --sampler ddim --steps 100
N_TABLE := 2000
N_PER_CLASS := 100
DDIM_STEPS := 10 20 50 100 1000
EVERY  := 1000
GRID   := 64
GSTEPS := 50
N_GRID := 8
TRI_STEPS := 50 4
# The 1,000-step DDIM files sample with the network compiled and replayed as a CUDA graph (compiling once
# per file, then no Python or launch overhead per step); the shorter files, the two 100-step evaluations of
# the model included, would likely spend more time compiling than sampling. The bench's eager and compiled
# sampling rows tell whether it pays: `COMPILE_EVAL=` turns it off. The trilemma's rows stay eager: its DDGAN
# generator has no compiled path, and the table compares the samplers' speeds.
EVAL_FLAGS := --bf16
COMPILE_EVAL := --compile
COMPILE := --compile
BENCH  := --batch-size 128 --sample-batch 256 --iters 20 --warmup 5
BENCH_PRESETS := ddpm-cifar10 mnist
endif
RESUME = $$(ls $(1)/ckpt_*.pt >/dev/null 2>&1 && echo --resume)
# A trainer's recipe line starts with `exec`: the trainer then takes the shell's place, and make, stopped by
# SIGTERM (a time limit), waits for it to save its checkpoint; a shell in between would die at once and
# make would return while the trainer is still saving (a machine given back then loses the checkpoint).
COPY_RUN = mkdir -p $(R)/training/$(1) && cp $(RUNS)/$(1)/metrics.jsonl $(RUNS)/$(1)/samples_*.png $(R)/training/$(1)/

TRAIN_DDPM = $(strip $(DL) train --data mnist-5k --preset $(PRESET) --T $(T) --steps $(DDPM_STEPS) --batch-size $(BATCH) $(TRAIN_EXTRA) \
             --sample-every $(EVERY) --n-samples $(GRID) --save-every $(EVERY) $(COMPILE) --out-dir $(RUNS)/ddpm_mnist)
TRAIN_CFG  = $(strip $(DL) train --data mnist-5k --preset $(PRESET) --T $(T) --steps $(CFG_STEPS) --batch-size $(BATCH) $(TRAIN_EXTRA) \
             --num-classes 10 --p-uncond 0.1 --sample-every $(EVERY) --n-samples $(GRID) --save-every $(EVERY) $(COMPILE) \
             --out-dir $(RUNS)/ddpm_mnist_cfg)
TRAIN_NC   = $(strip $(DL) train-noisy-classifier --data mnist-5k --preset $(NC_PRESET) --T $(T) --steps $(NC_STEPS) $(NC_EXTRA) \
             --out $(R)/noisy_classifier_mnist.pt)
TRAIN_DDGAN = $(strip $(DL) train-ddgan --data mnist-5k --preset $(DDGAN_PRESET) --steps $(DDGAN_STEPS) --batch-size $(BATCH) --d-steps 2 \
             --sample-every $(EVERY) --n-samples $(GRID) --save-every $(EVERY) --out-dir $(RUNS)/ddgan_mnist)

.PHONY: results results-ddpm results-ddim results-guidance results-ddgan results-bench
results: results-ddpm results-ddim results-guidance results-ddgan results-bench

$(R)/ddpm_mnist.pt:
	exec $(TRAIN_DDPM) $(call RESUME,$(RUNS)/ddpm_mnist)
	$(DL) export --checkpoint $(RUNS)/ddpm_mnist --out $@ --training-command "$(TRAIN_DDPM)"
	$(call COPY_RUN,ddpm_mnist)
$(R)/results/ddpm_mnist_eval.json: | $(R)/ddpm_mnist.pt
	$(DL) evaluate --checkpoint $(R)/ddpm_mnist.pt --n $(N_EVAL) $(EVAL_SAMPLER) $(EVAL_FLAGS) --out $@
# The raw θ is scored with as many samples as θ_ema (N_EVAL): FID-MNIST falls as the count grows, so
# notebook 06 can compare the two only at equal counts.
$(R)/results/ddpm_mnist_raw_eval.json: | $(R)/ddpm_mnist.pt
	@ls $(RUNS)/ddpm_mnist/ckpt_*.pt >/dev/null 2>&1 || { echo "the raw θ lives only in the training run folder" \
	    "$(RUNS)/ddpm_mnist, which is missing here: move $(R)/ddpm_mnist.pt aside and make this file again to retrain"; \
	    exit 1; }
	$(DL) evaluate --checkpoint $(RUNS)/ddpm_mnist --weights raw --n $(N_EVAL) $(EVAL_SAMPLER) $(EVAL_FLAGS) --out $@
results-ddpm: $(R)/ddpm_mnist.pt $(R)/results/ddpm_mnist_eval.json $(R)/results/ddpm_mnist_raw_eval.json

# DDIM's quality against steps (the DDIM paper's Table 1): one JSON per (steps, η).
define DDIM_RULE
$(R)/results/ddim/steps$(1)_eta$(2).json: | $(R)/ddpm_mnist.pt
	$(DL) evaluate --checkpoint $(R)/ddpm_mnist.pt --sampler ddim --steps $(1) --eta $(2) --n $(N_TABLE) $(EVAL_FLAGS) \
	    $(if $(filter 1000,$(1)),$(COMPILE_EVAL)) --out $$@
DDIM_FILES += $(R)/results/ddim/steps$(1)_eta$(2).json
endef
$(foreach s,$(DDIM_STEPS),$(foreach e,0 1,$(eval $(call DDIM_RULE,$(s),$(e)))))
results-ddim: $(DDIM_FILES)

$(R)/noisy_classifier_mnist.pt:
	$(TRAIN_NC)
$(R)/ddpm_mnist_cfg.pt:
	exec $(TRAIN_CFG) $(call RESUME,$(RUNS)/ddpm_mnist_cfg)
	$(DL) export --checkpoint $(RUNS)/ddpm_mnist_cfg --out $@ --training-command "$(TRAIN_CFG)"
	$(call COPY_RUN,ddpm_mnist_cfg)
$(R)/results/guidance_mnist.json: | $(R)/ddpm_mnist.pt $(R)/noisy_classifier_mnist.pt
	$(DL) evaluate-guidance --checkpoint $(R)/ddpm_mnist.pt --classifier $(R)/noisy_classifier_mnist.pt --scales 0 1 2 4 8 \
	    --n-per-class $(N_PER_CLASS) --sampler ddim --steps $(GSTEPS) --out $@
$(R)/results/cfg_mnist.json: | $(R)/ddpm_mnist_cfg.pt
	$(DL) evaluate-guidance --checkpoint $(R)/ddpm_mnist_cfg.pt --cfg-scales 0 1 2 4 --n-per-class $(N_PER_CLASS) \
	    --sampler ddim --steps $(GSTEPS) --out $@
$(R)/results/guided_s%.png: | $(R)/ddpm_mnist.pt $(R)/noisy_classifier_mnist.pt
	$(DL) sample --checkpoint $(R)/ddpm_mnist.pt --classifier $(R)/noisy_classifier_mnist.pt --label all --scale $* --n $(N_GRID) \
	    --sampler ddim --steps $(GSTEPS) --out $@
$(R)/results/cfg_w%.png: | $(R)/ddpm_mnist_cfg.pt
	$(DL) sample --checkpoint $(R)/ddpm_mnist_cfg.pt --label all --cfg-scale $* --n $(N_GRID) --sampler ddim --steps $(GSTEPS) --out $@
results-guidance: $(R)/results/guidance_mnist.json $(R)/results/cfg_mnist.json \
	$(foreach v,0 1 4,$(R)/results/guided_s$(v).png $(R)/results/cfg_w$(v).png)

$(R)/ddgan_mnist.pt:
	exec $(TRAIN_DDGAN) $(call RESUME,$(RUNS)/ddgan_mnist)
	$(DL) export-ddgan --checkpoint $(RUNS)/ddgan_mnist --out $@ --training-command "$(TRAIN_DDGAN)"
	$(call COPY_RUN,ddgan_mnist)
$(R)/results/trilemma_mnist.json: | $(R)/ddpm_mnist.pt $(R)/ddgan_mnist.pt
	$(DL) trilemma --ddpm $(R)/ddpm_mnist.pt --ddgan $(R)/ddgan_mnist.pt --ddim-steps $(TRI_STEPS) --n $(N_TRI) $(EVAL_FLAGS) --out $@
results-ddgan: $(R)/results/trilemma_mnist.json

# Every output is written atomically (a stop leaves the old file or the new one), so none may be deleted: make
# deletes a target whose file changed while its recipe ran when SIGTERM (a time limit) reaches it, and a
# time limit can land between a result's write and the end of its command.
.PRECIOUS: $(R)/ddpm_mnist.pt $(R)/ddpm_mnist_cfg.pt $(R)/noisy_classifier_mnist.pt $(R)/ddgan_mnist.pt \
    $(R)/results/ddpm_mnist_eval.json $(R)/results/ddpm_mnist_raw_eval.json $(DDIM_FILES) \
    $(R)/results/guidance_mnist.json $(R)/results/cfg_mnist.json $(R)/results/guided_s%.png \
    $(R)/results/cfg_w%.png $(R)/results/trilemma_mnist.json $(R)/results/bench_%.json

$(R)/results/bench_%.json:
	$(DL) bench $(BENCH) --preset $* --out $@
results-bench: $(foreach p,$(BENCH_PRESETS),$(R)/results/bench_$(p).json)

# Wheels for the GPU machine of the course's device tool (Python 3.12, x86-64, torch already there):
# the packages `make results` needs that its image lacks (their own needs are there; diffusers' importlib_metadata
# is imported only below Python 3.8, and its 10.x wheel would need lazy-importer). Carry .whl/ and install with
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
DEVICE_WHEELS ?= mlxtend==0.25.0 diffusers==0.42.1
wheels:
	python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	    --platform manylinux2014_x86_64 -d .whl $(DEVICE_WHEELS)
.PHONY: wheels
