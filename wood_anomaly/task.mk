# wood_anomaly: unsupervised anomaly detection and segmentation on unlabeled wood photos. Included by the root Makefile.
#   make train-wood                  fit the memory bank on $(DATA_ROOT)/wood (demo photos on a fresh clone) -> $(RUNS)/wood
#   make predict-wood                heatmap / mask / overlay per photo + predictions.csv -> $(RUNS)/wood/pred
#   make bench-wood DATA_ROOT=../shared/data    train on the 7 real photos, score vs consensus masks,
#                                    side by side with the median-colour baseline -> benchmarks/wood.json
#   make demo-wood                   short train + predict + evaluate on the demo photos (< 2 min)
#   make check-wood                  this package's tests only (make test runs them all); PYTEST_ARGS="-k name -x" narrows
WOOD_TRAIN_ARGS ?=
WOOD_PREDICT_ARGS ?=

.PHONY: train-wood predict-wood bench-wood demo-wood

train-wood: venv-torch demo-data-wood
	$(TORCH_PY) wood_anomaly/train.py --data $(DATA_ROOT)/wood --out $(RUNS)/wood $(WOOD_TRAIN_ARGS)

$(RUNS)/wood/model.pt:
	$(MAKE) train-wood

predict-wood: venv-torch demo-data-wood $(RUNS)/wood/model.pt
	$(TORCH_PY) wood_anomaly/predict.py --data $(DATA_ROOT)/wood --model $(RUNS)/wood/model.pt \
	  --out $(RUNS)/wood/pred $(WOOD_PREDICT_ARGS)

bench-wood: venv-torch
	$(TORCH_PY) wood_anomaly/bench.py --data $(DATA_ROOT)/wood --runs $(RUNS)/wood_bench --out benchmarks/wood.json \
	  --weights 0,0.5,1 --extra-seeds 1

demo-wood: venv-torch demo-data-wood
	$(TORCH_PY) wood_anomaly/train.py --data $(DATA_ROOT)/wood --out $(RUNS)/wood_demo
	$(TORCH_PY) wood_anomaly/predict.py --data $(DATA_ROOT)/wood --model $(RUNS)/wood_demo/model.pt \
	  --out $(RUNS)/wood_demo/pred
	$(TORCH_PY) wood_anomaly/evaluate.py --pred $(RUNS)/wood_demo/pred --data $(DATA_ROOT)/wood \
	  --json $(RUNS)/wood_demo/metrics.json

DEMO_TARGETS += demo-wood
TEST_TORCH += wood_anomaly

$(eval $(call task_rules,wood,wood_anomaly,wood,venv-torch,TORCH_PY))
