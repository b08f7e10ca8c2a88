# ptq-mia: reproduce "Bits for Privacy" (PTQ vs membership inference). `make help` lists targets.
PY      ?= .venv/bin/python
PIP     ?= .venv/bin/pip
SWEEP   ?=
CACHE   ?= outputs/cache
QUANTS  ?= adaround,brecq,obc
BITS    ?= 4,2,1.58
# the paper protocol, spelled out (the experiment presets set the same; see conf/experiment/paper_*.yaml)
PAPER   := model=resnet18 train=paper n_models=65 pkeep=0.5 targets=[0] bitwidth=paper attack=all \
           quant=adaround,brecq,obc bits=4,2,1.58

.DEFAULT_GOAL := help
.PHONY: help install test test-all demo quant-table bench report sync clean-cache \
        paper-cifar10 paper-cifar100 paper-tinyimagenet

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-20s %s\n", $$1, $$2}'

install:  ## create .venv and install the package (editable) with dev + launcher extras
	python3 -m venv .venv
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e '.[dev,launchers]'

test:  ## fast test suite (CPU, tiny data)
	$(PY) -m pytest -q -m "not slow"

test-all:  ## every test, including the slow ones
	$(PY) -m pytest -q

demo:  ## the paper sweep on the embedded default (digits): AdaRound/BRECQ/OBC x 4/2/1.58 bits, CPU
	$(PY) -m src.main -m quant=$(QUANTS) bits=$(BITS)

quant-table:  ## accuracy + time of FP, RTN, AdaRound, BRECQ, OBC at 4/3/2/1.58 bits on the embedded default
	$(PY) -m benchmarks.quant_table

bench:  ## throughput benchmark (reference-style loop vs ours, scoring, quantizers); JSON in outputs/bench/
	$(PY) -m benchmarks.bench

report:  ## rebuild summary.csv/.md and plots of a sweep: make report SWEEP=outputs/multirun/<stamp>
	@test -n "$(SWEEP)" || (echo "error: SWEEP=<multirun dir> is required" >&2; exit 2)
	$(PY) -m src.report.summary $(SWEEP)

paper-cifar10:  ## paper protocol on CIFAR-10: ResNet-18, 64 shadows + target, 100 epochs, 3 methods x 3 bit-widths, all attacks
	$(PY) -m src.main -m experiment=paper_cifar10 dataset=cifar10 $(PAPER)

paper-cifar100:  ## paper protocol on CIFAR-100
	$(PY) -m src.main -m experiment=paper_cifar100 dataset=cifar100 $(PAPER)

paper-tinyimagenet:  ## paper protocol on TinyImageNet (needs paths.data_dir/tiny-imagenet-200)
	$(PY) -m src.main -m experiment=paper_tinyimagenet dataset=tinyimagenet $(PAPER)

sync:  ## upload offline W&B runs (needs `wandb login` and network)
	@runs=$$(find outputs -path '*/wandb/offline-run-*' -prune 2>/dev/null); \
	if [ -z "$$runs" ]; then echo "no offline W&B runs under outputs/"; else .venv/bin/wandb sync $$runs; fi

clean-cache:  ## delete the artifact cache and nothing else (CACHE=<paths.cache_dir>, default outputs/cache)
	rm -rf -- "$(CACHE)"
