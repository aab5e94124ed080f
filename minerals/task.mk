MINERALS_RUN ?= $(RUNS)/minerals
MINERALS_TRAIN_ARGS ?=
MINERALS_PATCHES ?= $(MINERALS_RUN)/samples/patches
MINERALS_BENCH_RUN ?= $(RUNS)/minerals_bench
MINERALS_BENCH_ARGS ?=
MINERALS_EVAL_DATA ?=

.PHONY: train-minerals predict-minerals eval-minerals bench-minerals docs-minerals demo-minerals figures-minerals

train-minerals: venv-torch demo-data-minerals  ## extract patches of $(DATA_ROOT)/minerals, train OreNet on every photo -> $(MINERALS_RUN)/train (MINERALS_TRAIN_ARGS="--backbone efficientnet_lite1": transfer)
	@# --val-fold -1: every photo trains for the epochs chosen by cross-validation; temperature and threshold
	@# from cross-validation runs' held-out predictions (config.CV_CALIBRATION, or --calibration FILE)
	$(TORCH_PY) minerals/extract_samples.py --data $(DATA_ROOT)/minerals --out $(MINERALS_RUN)/samples
	$(TORCH_PY) minerals/train.py --data $(MINERALS_RUN)/samples --out $(MINERALS_RUN)/train --val-fold -1 \
	  $(MINERALS_TRAIN_ARGS)

$(MINERALS_RUN)/train/best.pt:
	$(MAKE) train-minerals

predict-minerals: venv-torch demo-data-minerals $(MINERALS_RUN)/train/best.pt  ## classify the patches (MINERALS_PATCHES=folder-or-files) -> $(MINERALS_RUN)/results.json
	@# exit status 1 with the file written: some patches were unreadable (named above), the rest classified;
	@# predict.py writes results.json by a rename once complete, so a failure leaves the last one whole
	$(TORCH_PY) minerals/predict.py $(MINERALS_PATCHES) --checkpoint $(MINERALS_RUN)/train/best.pt \
	  --out $(MINERALS_RUN)/results.json || [ $$? -eq 1 ]

eval-minerals: venv-torch $(MINERALS_RUN)/train/best.pt  ## MINERALS_EVAL_DATA=<class>/<patch> folders of new photos' patches: accuracy, macro-F1, per class, confusion matrices, threshold curve, calibration, mistakes
	@# the run of train-minerals learned from every photo: its figures need patches it has not seen
	@test -n "$(MINERALS_EVAL_DATA)" || { echo "eval-minerals: give MINERALS_EVAL_DATA=<folder of <class>/<patch>>" \
	  "(the run of train-minerals trained on every photo; held-out figures of the recipe: make bench-minerals)"; exit 2; }
	@# exit status 1 with the figures written: some patches were unreadable (named above), the rest evaluated
	$(TORCH_PY) minerals/evaluate.py --checkpoint $(MINERALS_RUN)/train/best.pt --data $(MINERALS_EVAL_DATA) \
	  || [ $$? -eq 1 ]

bench-minerals: venv-torch  ## both defaults on the real photos (DATA_ROOT=../shared/data; MINERALS_BENCH_ARGS="--folds 5") -> benchmarks/minerals.json
	$(TORCH_PY) minerals/bench.py --data $(DATA_ROOT)/minerals --out $(MINERALS_BENCH_RUN) --json benchmarks/minerals.json \
	  $(MINERALS_BENCH_ARGS)

docs-minerals: venv-torch  ## the PDF report of the bench runs -> minerals/docs/minerals_report.pdf (not committed)
	$(TORCH_PY) minerals/report.py --runs $(MINERALS_BENCH_RUN) --out minerals/docs/minerals_report.pdf

demo-minerals: venv-torch demo-data-minerals  ## demo photos: extract, short train, predict, evaluate, PDF -> $(RUNS)/minerals_demo (the scripts' default run until $(MINERALS_RUN)/train exists)
	$(TORCH_PY) minerals/extract_samples.py --data $(DATA_ROOT)/minerals --out $(RUNS)/minerals_demo/samples
	$(TORCH_PY) minerals/train.py --data $(RUNS)/minerals_demo/samples --out $(RUNS)/minerals_demo/scratch \
	  --epochs 20 --batch-size 16 --img-size 48 --width 0.5 --mix 0 --threads 1
	$(TORCH_PY) minerals/predict.py $(RUNS)/minerals_demo/samples/patches --checkpoint $(RUNS)/minerals_demo/scratch/best.pt \
	  --threshold 0.5 --threads 1 --out $(RUNS)/minerals_demo/results.json
	$(TORCH_PY) minerals/evaluate.py --checkpoint $(RUNS)/minerals_demo/scratch/best.pt --data $(RUNS)/minerals_demo/samples \
	  --threads 1
	$(TORCH_PY) minerals/report.py --runs $(RUNS)/minerals_demo --out $(RUNS)/minerals_demo/minerals_report.pdf
	@echo "demo-minerals: results in $(RUNS)/minerals_demo/ (results.json, scratch/eval/, minerals_report.pdf);" \
	  "python minerals/predict.py and evaluate.py use this run until make train-minerals writes $(MINERALS_RUN)/train"

figures-minerals: demo-minerals  ## README figures: the demo run, the benchmark record's folds (+ bench runs if present) -> minerals/docs/*.png
	$(TORCH_PY) -m minerals.figures --demo $(RUNS)/minerals_demo --photos $(DATA_ROOT)/minerals \
	  --record benchmarks/minerals.json \
	  $(if $(wildcard $(MINERALS_BENCH_RUN)/scratch/eval/metrics.json),--bench $(MINERALS_BENCH_RUN)) --out minerals/docs

DEMO_TARGETS += demo-minerals
FIGURE_TARGETS += figures-minerals
TEST_TORCH += minerals

$(eval $(call task_rules,minerals,minerals,minerals,venv-torch,TORCH_PY))
