# ptq-mia: reproduce "Bits for Privacy" (PTQ vs membership inference). `make help` lists targets.
PY      ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
PIP     ?= .venv/bin/pip
SWEEP   ?=
CACHE   ?= outputs/cache
QUANTS  ?= adaround,brecq,obc
BITS    ?= 4,2,1.58
DATA    ?=
SWEEP_DIR ?=
MATCHED ?= adaround
# demo-cifar10 runs two multiruns into one sweep dir (one summary): default a fresh stamped dir
DEMO_CIFAR10_DIR := $(or $(SWEEP_DIR),outputs/multirun/demo-cifar10-$(shell date +%Y-%m-%d_%H-%M-%S))
DEMO_TIN_DIR := $(or $(SWEEP_DIR),outputs/multirun/demo-tinyimagenet-$(shell date +%Y-%m-%d_%H-%M-%S))
DEMO_RN18_DIR := $(or $(SWEEP_DIR),outputs/multirun/demo-cifar10-resnet18-$(shell date +%Y-%m-%d_%H-%M-%S))
ACT_DIR := $(or $(SWEEP_DIR),outputs/multirun/activations-$(shell date +%Y-%m-%d_%H-%M-%S))
ACT_QUANTS ?= adaround,brecq,obc
ACT_WBITS  ?= 4,2
ACT_ABITS  ?= 8,4
SWEEPS  ?=
CROSS_OUT ?= outputs/cross-dataset/$(shell date +%Y-%m-%d_%H-%M-%S)

.DEFAULT_GOAL := help
.PHONY: help install test test-portable test-all demo demo-cifar10 demo-tinyimagenet demo-cifar10-resnet18 activations cross-dataset controls quant-table bench gpu-bundle gpu-check report sync wandb-report clean-cache pages \
        paper-cifar10 paper-cifar100 paper-tinyimagenet ablation-last-layer layer-attribution

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-20s %s\n", $$1, $$2}'

TORCH_INDEX ?=
install:  ## create .venv and install the package (editable) with dev + launcher extras; TORCH_INDEX=<CPU wheel index> for a CPU-only torch
	python3 -m venv .venv
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -q -e '.[dev,launchers]'

test:  ## fast test suite (CPU, tiny data)
	$(PY) -m pytest -q -m "not slow"

# the numeric test modules once more on torch's portable kernels and another thread count; passive
# OpenMP waits: spinning threads of many tiny ops on a busy 2-core runner are ~10x slower (same results)
NUMERIC_TESTS := tests/test_adaround_brecq.py tests/test_grid.py tests/test_obc.py tests/test_obc_columns.py \
                 tests/test_attacks.py tests/test_metrics.py tests/test_gptq.py tests/test_evidence.py \
                 tests/test_controls.py tests/test_models.py tests/test_architectures.py tests/test_epsilon.py \
                 tests/test_obc_memory.py tests/test_precision.py tests/test_layer_overrides.py \
                 tests/test_activation_quant.py tests/test_cpu_workers.py tests/test_convergence.py tests/test_qdrop.py \
                 tests/test_pooled.py tests/test_joint_release.py
test-portable:  ## numeric tests again with ATEN_CPU_CAPABILITY=default and 2 threads (results must not hinge on one CPU)
	ATEN_CPU_CAPABILITY=default PTQ_TEST_THREADS=2 OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -m "not slow" $(NUMERIC_TESTS)

test-all:  ## every test, including the slow ones
	$(PY) -m pytest -q

demo:  ## the paper sweep on the embedded default (digits): AdaRound/BRECQ/OBC x 4/2/1.58 bits, CPU; extra args in ARGS=
	$(PY) -m src.main -m quant=$(QUANTS) bits=$(BITS) $(ARGS)

demo-cifar10:  ## CIFAR-10 on a CPU (experiment=cifar10_cpu): 9-job sweep + matched refs for MATCHED; DATA=DIR (image folder), CACHE=, SWEEP_DIR=
	$(PY) -m src.main -m experiment=cifar10_cpu $(if $(DATA),dataset=imagefolder dataset.root=$(DATA)) \
	  paths.cache_dir=$(CACHE) hydra.sweep.dir=$(DEMO_CIFAR10_DIR) quant=$(QUANTS) bits=$(BITS)
	$(PY) -m src.main -m experiment=cifar10_cpu $(if $(DATA),dataset=imagefolder dataset.root=$(DATA)) \
	  paths.cache_dir=$(CACHE) hydra.sweep.dir=$(DEMO_CIFAR10_DIR) 'hydra.sweep.subdir=matched$${hydra.job.num}' \
	  quant=$(MATCHED) bits=$(BITS) attack.reference=matched

demo-cifar10-resnet18:  ## ResNet-18 (width 16) on CIFAR-10 on a CPU (experiment=cifar10_cpu_resnet18): the 9-job sweep; DATA=DIR (image folder), CACHE=, SWEEP_DIR=
	$(PY) -m src.main -m experiment=cifar10_cpu_resnet18 $(if $(DATA),dataset=imagefolder dataset.root=$(DATA)) \
	  paths.cache_dir=$(CACHE) hydra.sweep.dir=$(DEMO_RN18_DIR) quant=$(QUANTS) bits=$(BITS)

demo-tinyimagenet:  ## TinyImageNet on a CPU (experiment=tinyimagenet_cpu): the 9-job sweep; DATA=DIR holding tiny-imagenet-200/, CACHE=, SWEEP_DIR=
	$(PY) -m src.main -m experiment=tinyimagenet_cpu $(if $(DATA),paths.data_dir=$(DATA)) \
	  paths.cache_dir=$(CACHE) hydra.sweep.dir=$(DEMO_TIN_DIR) quant=$(QUANTS) bits=$(BITS)

activations:  ## W/A vs weight-only on the CPU CIFAR-10 protocol, one summary + activations.md/.png: ACT_QUANTS x ACT_WBITS x quant.act_bits=ACT_ABITS, the weight-only rows (cached after demo-cifar10 with the same CACHE) and OBC with quantized-prefix Hessians; DATA=, CACHE=, SWEEP_DIR=
	$(PY) -m src.main -m experiment=cifar10_cpu $(if $(DATA),dataset=imagefolder dataset.root=$(DATA)) \
	  paths.cache_dir=$(CACHE) hydra.sweep.dir=$(ACT_DIR) quant=$(ACT_QUANTS) bits=$(ACT_WBITS) quant.act_bits=$(ACT_ABITS)
	$(PY) -m src.main -m experiment=cifar10_cpu $(if $(DATA),dataset=imagefolder dataset.root=$(DATA)) \
	  paths.cache_dir=$(CACHE) hydra.sweep.dir=$(ACT_DIR) 'hydra.sweep.subdir=w$${hydra.job.num}' \
	  quant=$(ACT_QUANTS) bits=$(ACT_WBITS)
	$(PY) -m src.main -m experiment=cifar10_cpu $(if $(DATA),dataset=imagefolder dataset.root=$(DATA)) \
	  paths.cache_dir=$(CACHE) hydra.sweep.dir=$(ACT_DIR) 'hydra.sweep.subdir=s$${hydra.job.num}' \
	  quant=obc bits=$(ACT_WBITS) quant.sequential=true
	$(PY) -m src.report.activations $(ACT_DIR) --attack lira_online_fixed

cross-dataset:  ## one table + figure across sweeps of several datasets: make cross-dataset SWEEPS="DIR1 DIR2" [CROSS_OUT=DIR]
	@test -n "$(SWEEPS)" || (echo "error: SWEEPS=\"<multirun dir> ...\" is required" >&2; exit 2)
	$(PY) -m src.report.cross_dataset $(SWEEPS) --out $(CROSS_OUT)

SIGMAS     ?= 0.05,0.1,0.15,0.2,0.3
SPARSITIES ?= 0.1,0.2,0.3,0.4,0.5
CONTROLS_DIR ?= outputs/controls/$(shell date +%Y-%m-%d_%H-%M-%S)
CONTROLS_DIR := $(CONTROLS_DIR)
controls:  ## quantizers next to matched-utility controls (weight noise SIGMAS, pruning SPARSITIES) in one summary; CONTROLS_DIR=, extra args in ARGS=
	$(PY) -m src.main -m quant=$(QUANTS) bits=$(BITS) $(ARGS) hydra.sweep.dir=$(CONTROLS_DIR) 'hydra.sweep.subdir=q$${hydra.job.num}'
	$(PY) -m src.main -m quant=noise quant.sigma=$(SIGMAS) $(ARGS) hydra.sweep.dir=$(CONTROLS_DIR) 'hydra.sweep.subdir=noise$${hydra.job.num}'
	$(PY) -m src.main -m quant=prune quant.sparsity=$(SPARSITIES) $(ARGS) hydra.sweep.dir=$(CONTROLS_DIR) 'hydra.sweep.subdir=prune$${hydra.job.num}'

# per-layer precision studies (docs/ablation.md) on the CPU CIFAR-10 protocol; sweep dirs stamped once per make,
# job dirs named by quantizer and bits, so several makes (QUANTS=obc, then QUANTS=adaround) can fill one sweep dir
comma := ,
CIFAR10_CPU = experiment=cifar10_cpu $(if $(DATA),dataset=imagefolder dataset.root=$(DATA)) paths.cache_dir=$(CACHE)
LAST     ?= 1.58,2,3,4,8,fp
ABL_BITS ?= 1.58
ABLATION_DIR ?= outputs/ablation/last-layer-$(shell date +%Y-%m-%d_%H-%M-%S)
ABLATION_DIR := $(ABLATION_DIR)
ablation-last-layer:  ## the study's ablation: QUANTS at ABL_BITS, last layer at LAST (bits or fp); figure + ΔAUC table; DATA=, CACHE=, ABLATION_DIR=, ARGS=
	$(PY) -m src.main -m $(CIFAR10_CPU) hydra.sweep.dir=$(ABLATION_DIR) quant=$(QUANTS) bits=$(ABL_BITS) \
	  bitwidth.last=$(LAST) 'hydra.sweep.subdir=$(subst $(comma),-,$(QUANTS))-$${hydra.job.num}' $(ARGS)
	$(PY) -m src.report.ablation last-layer $(ABLATION_DIR)

ATTR_QUANT ?= obc
ATTR_BITS  ?= 2,1.58
ATTRIBUTION_DIR ?= outputs/ablation/layer-attribution-$(shell date +%Y-%m-%d_%H-%M-%S)
ATTRIBUTION_DIR := $(ATTRIBUTION_DIR)
layer-attribution:  ## each layer alone quantized (bitwidth.only, rest FP) with ATTR_QUANT at ATTR_BITS; ΔAUC and Δ test accuracy per layer; DATA=, CACHE=, ATTRIBUTION_DIR=, ARGS=
	layers=$$($(PY) -m src.report.ablation layers experiment=cifar10_cpu $(ARGS)) && \
	$(PY) -m src.main -m $(CIFAR10_CPU) hydra.sweep.dir=$(ATTRIBUTION_DIR) quant=$(ATTR_QUANT) bits=$(ATTR_BITS) \
	  bitwidth.only=$$layers 'hydra.sweep.subdir=$(ATTR_QUANT)-$(subst $(comma),-,$(ATTR_BITS))-$${hydra.job.num}' $(ARGS)
	$(PY) -m src.report.ablation attribution $(ATTRIBUTION_DIR)

quant-table:  ## accuracy + time of FP, RTN, AdaRound, BRECQ, OBC, GPTQ at 4/3/2/1.58 bits on the embedded default
	$(PY) -m benchmarks.quant_table

bench:  ## throughput benchmark (reference-style loop vs ours, scoring, quantizers); JSON in outputs/bench/
	$(PY) -m benchmarks.bench
	$(PY) -m benchmarks.gptq_vs_obc

# The GPU check travels as one folder (docs/gpu.md): the wheels of what it imports beyond torch,
# torchvision, lightning, torchmetrics and scikit-learn (pure Python, at this venv's versions, so any
# Python 3 takes them), a CIFAR-10 image folder as an archive, and the script that runs it.
BUNDLE_REQS := hydra-core omegaconf antlr4-python3-runtime rich markdown-it-py mdurl pygments
gpu-bundle:  ## fill DIR with what the GPU check needs on a machine without a registry: DIR=, DATA=CIFAR-10 image folder
	@test -n "$(DIR)" || { echo "error: DIR=<bundle folder> is required" >&2; exit 2; }
	@test -z "$(DATA)" || test -d "$(DATA)/train" -a -d "$(DATA)/test" || \
	  { echo "error: DATA=$(DATA): need an image folder holding train/<class>/* and test/<class>/*" >&2; exit 2; }
	@mkdir -p "$(DIR)"
	$(PY) -m pip wheel -q --no-deps -w "$(DIR)" $$($(PY) -c "import importlib.metadata as m; \
	  print(' '.join(f'{n}=={m.version(n)}' for n in '$(BUNDLE_REQS)'.split()))")
	cp benchmarks/gpu_check.sh "$(DIR)/gpu_check.sh"
	$(if $(DATA),tar -czf "$(DIR)/cifar10.tar.gz" -C "$(DATA)" train test)
	@$(PY) -c "import pathlib, sys; w = sorted(p.name for p in pathlib.Path('$(DIR)').glob('*.whl')); \
	  bad = [n for n in w if not n.endswith('-none-any.whl')]; print(len(w), 'wheels in $(DIR):', ' '.join(w)); \
	  sys.exit(f'not pure-python: {bad}' if bad else 0)"

GPU_OUT ?= outputs/gpu_check
gpu-check:  ## the GPU check with this venv (no bundle): results in GPU_OUT=DIR, DATA=DIR (image folder), ARGS=
	PYTHONUNBUFFERED=1 $(PY) -m benchmarks.gpu_check --out "$(GPU_OUT)" $(if $(DATA),--data "$(DATA)") $(ARGS)

ATTACK  ?=
METRIC  ?=
report:  ## rebuild summary.csv/.md/.tex and plots of a sweep: make report SWEEP=<dir> [ATTACK=lira_online] [METRIC=tpr_at_fpr_1e-2]
	@test -n "$(SWEEP)" || (echo "error: SWEEP=<multirun dir> is required" >&2; exit 2)
	@$(PY) -m src.report.summary $(SWEEP) $(if $(ATTACK),--attack $(ATTACK)) $(if $(METRIC),--metric $(METRIC))

# the committed result pages (outputs/<page>/ + docs) from their sweeps: DEMO_SWEEP (digits, `make demo`),
# CIFAR10_SWEEP, RN18_SWEEP, TIN_SWEEP (real-data demos), ACT_SWEEP (`make activations`). A page whose sweep
# is not given is redrawn from its committed summary.csv (tables and privacy-utility figures; its ROC stays).
DEMO_SWEEP    ?=
CIFAR10_SWEEP ?=
RN18_SWEEP    ?=
TIN_SWEEP     ?=
ACT_SWEEP     ?=
PAGE_FILES := summary.md summary.csv summary.tex privacy_utility.png privacy_utility_delta.png roc.png
define page
	@if [ -n "$(2)" ]; then \
	  $(PY) -m src.report.summary $(2) > /dev/null && mkdir -p outputs/$(1) && \
	  for f in $(PAGE_FILES); do if [ -f $(2)/$$f ]; then cp $(2)/$$f outputs/$(1)/; fi; done && \
	  echo "outputs/$(1): from $(2)"; \
	elif [ -f outputs/$(1)/summary.csv ]; then \
	  $(PY) -m src.report.summary outputs/$(1) --from-csv outputs/$(1)/summary.csv > /dev/null && \
	  echo "outputs/$(1): redrawn from its summary.csv (give $(3)=<sweep dir> to rebuild it from the runs)"; \
	else echo "outputs/$(1): skipped (give $(3)=<sweep dir>)"; fi
endef
pages:  ## regenerate every committed result page and figure from its runs: DEMO_SWEEP=, CIFAR10_SWEEP=, RN18_SWEEP=, TIN_SWEEP=, ACT_SWEEP=
	$(call page,demo,$(DEMO_SWEEP),DEMO_SWEEP)
	$(call page,demo-cifar10,$(CIFAR10_SWEEP),CIFAR10_SWEEP)
	$(call page,demo-cifar10-resnet18,$(RN18_SWEEP),RN18_SWEEP)
	$(call page,demo-tinyimagenet,$(TIN_SWEEP),TIN_SWEEP)
	$(call page,activations,$(ACT_SWEEP),ACT_SWEEP)
	@if [ -n "$(ACT_SWEEP)" ]; then $(PY) -m src.report.activations $(ACT_SWEEP) --attack lira_online_fixed && \
	  cp $(ACT_SWEEP)/activations.md $(ACT_SWEEP)/activations.png outputs/activations/; \
	  else echo "outputs/activations: kept (give ACT_SWEEP=<sweep dir>)"; fi
	@if [ -n "$(CIFAR10_SWEEP)" ] && [ -n "$(TIN_SWEEP)" ]; then \
	  $(PY) -m src.report.cross_dataset $(CIFAR10_SWEEP) $(TIN_SWEEP) --attack lira_online_fixed --out outputs/cross-dataset; \
	  else echo "outputs/cross-dataset: kept (give CIFAR10_SWEEP= and TIN_SWEEP=)"; fi

paper-cifar10:  ## paper protocol on CIFAR-10: ResNet-18, 64 shadows + target, 100 epochs, 3 methods x 3 bit-widths, all attacks
	$(PY) -m src.main -m experiment=paper_cifar10 $(ARGS)

paper-cifar100:  ## paper protocol on CIFAR-100
	$(PY) -m src.main -m experiment=paper_cifar100 $(ARGS)

paper-tinyimagenet:  ## paper protocol on TinyImageNet (needs paths.data_dir/tiny-imagenet-200)
	$(PY) -m src.main -m experiment=paper_tinyimagenet $(ARGS)

# W&B's own folders under outputs/wandb/ unless set (as the jobs do: src/report/wandb_sink.py, local_wandb_dirs)
WANDB_ENV = WANDB_DIR=$${WANDB_DIR:-$(CURDIR)/outputs/wandb} WANDB_CACHE_DIR=$${WANDB_CACHE_DIR:-$(CURDIR)/outputs/wandb/cache} \
            WANDB_DATA_DIR=$${WANDB_DATA_DIR:-$(CURDIR)/outputs/wandb/data}
sync:  ## upload offline W&B runs (needs `wandb login` and network)
	@runs=$$(find outputs -path '*/wandb/offline-run-*' -prune 2>/dev/null); \
	if [ -z "$$runs" ]; then echo "no offline W&B runs under outputs/"; else \
	  mkdir -p outputs/wandb/wandb && $(WANDB_ENV) $(PY) -m wandb sync $$runs; fi

wandb-report:  ## save a W&B Report comparing a sweep's runs (after `make sync`): make wandb-report SWEEP=outputs/multirun/<stamp>
	@test -n "$(SWEEP)" || (echo "error: SWEEP=<multirun dir> is required" >&2; exit 2)
	@$(PY) -m src.report.wandb_report $(SWEEP)

clean-cache:  ## delete the artifact cache and nothing else (CACHE=<paths.cache_dir>, default outputs/cache)
	rm -rf -- "$(CACHE)"
