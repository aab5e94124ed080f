WOOD_TRAIN_ARGS ?=
WOOD_PREDICT_ARGS ?=

.PHONY: train-wood predict-wood bench-wood demo-wood figures-wood

train-wood: venv-torch demo-data-wood  ## fit the memory bank on $(DATA_ROOT)/wood (demo photos on a fresh clone) -> $(RUNS)/wood
	$(TORCH_PY) wood_anomaly/train.py --data $(DATA_ROOT)/wood --out $(RUNS)/wood $(WOOD_TRAIN_ARGS)

$(RUNS)/wood/model.pt:
	$(MAKE) train-wood

predict-wood: venv-torch demo-data-wood $(RUNS)/wood/model.pt  ## mask, heatmap, overlay per photo + predictions.csv -> $(RUNS)/wood/pred
	$(TORCH_PY) wood_anomaly/predict.py --data $(DATA_ROOT)/wood --model $(RUNS)/wood/model.pt \
	  --out $(RUNS)/wood/pred $(WOOD_PREDICT_ARGS)

bench-wood: venv-torch  ## the 7 real photos vs consensus masks and the median-colour baseline -> benchmarks/wood.json (DATA_ROOT=../shared/data)
	$(TORCH_PY) wood_anomaly/bench.py --data $(DATA_ROOT)/wood --runs $(RUNS)/wood_bench --out benchmarks/wood.json

demo-wood: venv-torch demo-data-wood  ## short train + predict + evaluate on the demo photos -> $(RUNS)/wood_demo
	$(TORCH_PY) wood_anomaly/train.py --data $(DATA_ROOT)/wood --out $(RUNS)/wood_demo
	$(TORCH_PY) wood_anomaly/predict.py --data $(DATA_ROOT)/wood --model $(RUNS)/wood_demo/model.pt \
	  --out $(RUNS)/wood_demo/pred
	$(TORCH_PY) wood_anomaly/evaluate.py --pred $(RUNS)/wood_demo/pred --data $(DATA_ROOT)/wood \
	  --json $(RUNS)/wood_demo/metrics.json

figures-wood: demo-wood  ## README figures of the demo run (+ real photos' scores from benchmarks/wood.json) -> wood_anomaly/docs/
	$(TORCH_PY) wood_anomaly/figures.py --data $(DATA_ROOT)/wood --pred $(RUNS)/wood_demo/pred --out wood_anomaly/docs

DEMO_TARGETS += demo-wood
FIGURE_TARGETS += figures-wood
TEST_TORCH += wood_anomaly

$(eval $(call task_rules,wood,wood_anomaly,wood,venv-torch,TORCH_PY))
