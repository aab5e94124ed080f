# minerals: sample extractor + 7-class mineral classifier with a confidence threshold. Included by the root Makefile.
#   make train-minerals              extract patches from $(DATA_ROOT)/minerals (demo photos on a fresh clone) and
#                                    train OreNet from scratch into $(RUNS)/minerals/train
#                                    (MINERALS_TRAIN_ARGS="--backbone efficientnet_lite0" for transfer learning)
#   make predict-minerals            classify the extracted patches -> $(RUNS)/minerals/results.json
#                                    (MINERALS_PATCHES=folder-or-files to classify your own patches)
#   make eval-minerals               accuracy, macro-F1, per-class P/R/F1, confusion matrix, threshold curves
#   make bench-minerals DATA_ROOT=../shared/data    both models on a fixed split -> benchmarks/minerals.json
#   make docs-minerals               the PDF report from the bench runs -> minerals/docs/minerals_report.pdf
#   make demo-minerals               extract + short train + predict + evaluate + report on demo photos (< 2 min)
#   make check-minerals              this package's tests only (make test runs them all); PYTEST_ARGS="-k name -x" narrows
MINERALS_RUN ?= $(RUNS)/minerals
MINERALS_TRAIN_ARGS ?=
MINERALS_PATCHES ?= $(MINERALS_RUN)/samples/patches
MINERALS_BENCH_RUN ?= $(RUNS)/minerals_bench

.PHONY: train-minerals predict-minerals eval-minerals bench-minerals docs-minerals demo-minerals

train-minerals: venv-torch demo-data-minerals
	$(TORCH_PY) minerals/extract_samples.py --data $(DATA_ROOT)/minerals --out $(MINERALS_RUN)/samples
	$(TORCH_PY) minerals/train.py --data $(MINERALS_RUN)/samples --out $(MINERALS_RUN)/train $(MINERALS_TRAIN_ARGS)

$(MINERALS_RUN)/train/best.pt:
	$(MAKE) train-minerals

predict-minerals: venv-torch demo-data-minerals $(MINERALS_RUN)/train/best.pt
	@# exit status 1 with the file written: some patches were unreadable (named above), the rest classified;
	@# a failure that writes nothing (bad checkpoint) stops at the mv and leaves the last results.json alone
	rm -f $(MINERALS_RUN)/results.new.json
	$(TORCH_PY) minerals/predict.py $(MINERALS_PATCHES) --checkpoint $(MINERALS_RUN)/train/best.pt \
	  --out $(MINERALS_RUN)/results.new.json || [ $$? -eq 1 ]
	mv $(MINERALS_RUN)/results.new.json $(MINERALS_RUN)/results.json

eval-minerals: venv-torch $(MINERALS_RUN)/train/best.pt
	$(TORCH_PY) minerals/evaluate.py --checkpoint $(MINERALS_RUN)/train/best.pt --data $(MINERALS_RUN)/samples

bench-minerals: venv-torch
	$(TORCH_PY) minerals/bench.py --data $(DATA_ROOT)/minerals --out $(MINERALS_BENCH_RUN) --json benchmarks/minerals.json

docs-minerals: venv-torch
	$(TORCH_PY) minerals/report.py --runs $(MINERALS_BENCH_RUN) --out minerals/docs/minerals_report.pdf

demo-minerals: venv-torch demo-data-minerals
	$(TORCH_PY) minerals/extract_samples.py --data $(DATA_ROOT)/minerals --out $(RUNS)/minerals_demo/samples
	$(TORCH_PY) minerals/train.py --data $(RUNS)/minerals_demo/samples --out $(RUNS)/minerals_demo/scratch \
	  --epochs 8 --img-size 48 --width 0.5 --mix 0 --threads 1
	$(TORCH_PY) minerals/predict.py $(RUNS)/minerals_demo/samples/patches --checkpoint $(RUNS)/minerals_demo/scratch/best.pt --threads 1 \
	  > $(RUNS)/minerals_demo/results.json
	$(TORCH_PY) minerals/evaluate.py --checkpoint $(RUNS)/minerals_demo/scratch/best.pt --data $(RUNS)/minerals_demo/samples \
	  --threads 1
	$(TORCH_PY) minerals/report.py --runs $(RUNS)/minerals_demo --out $(RUNS)/minerals_demo/minerals_report.pdf
	@echo "demo-minerals: results in $(RUNS)/minerals_demo/ (results.json, scratch/eval/, minerals_report.pdf)"

DEMO_TARGETS += demo-minerals
TEST_TORCH += minerals

$(eval $(call task_rules,minerals,minerals,minerals,venv-torch,TORCH_PY))
