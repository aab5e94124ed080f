# fcnn_rgb_gt: the brief's small FCN on one aerial rgb.png/gt.png pair. Included by the root Makefile.
#   make train-fcnn                  train on $(DATA_ROOT)/fcnn (rgb.png + gt.png; demo pair on a fresh clone)
#                                    into $(RUNS)/fcnn; a folder with train_substitute/ (the real set) uses that
#   make predict-fcnn                predict the training image -> $(RUNS)/fcnn/predictions.jpg (+ mask, overlay)
#   make bench-fcnn DATA_ROOT=../shared/data    train on train_substitute, test on extra/* -> benchmarks/fcnn.json
#   make demo-fcnn                   short train + predict on the demo pair (< 1.5 min)
#   make check-fcnn                  this package's tests only (make test runs them all); PYTEST_ARGS="-k name -x" narrows
FCNN_TRAIN_ARGS ?=
FCNN_PREDICT_ARGS ?=
# the training pair: $(DATA_ROOT)/fcnn itself, or its train_substitute/ when only that holds rgb.png
FCNN_DATA = $$(d=$(DATA_ROOT)/fcnn; [ -f $$d/rgb.png ] || [ ! -f $$d/train_substitute/rgb.png ] || d=$$d/train_substitute; echo $$d)

.PHONY: train-fcnn predict-fcnn bench-fcnn demo-fcnn

train-fcnn: venv-torch demo-data-fcnn
	$(TORCH_PY) fcnn_rgb_gt/train.py --data $(FCNN_DATA) --out $(RUNS)/fcnn $(FCNN_TRAIN_ARGS)

$(RUNS)/fcnn/best.pt:
	$(MAKE) train-fcnn

predict-fcnn: venv-torch demo-data-fcnn $(RUNS)/fcnn/best.pt
	$(TORCH_PY) fcnn_rgb_gt/predict.py --checkpoint $(RUNS)/fcnn/best.pt --data $(FCNN_DATA) $(FCNN_PREDICT_ARGS)

bench-fcnn: venv-torch
	$(TORCH_PY) fcnn_rgb_gt/bench.py --data $(DATA_ROOT)/fcnn --runs $(RUNS)/fcnn_bench --out benchmarks/fcnn.json

demo-fcnn: venv-torch demo-data-fcnn
	$(TORCH_PY) fcnn_rgb_gt/train.py --data $(FCNN_DATA) --out $(RUNS)/fcnn_demo --epochs 6 --tile 128
	$(TORCH_PY) fcnn_rgb_gt/predict.py --checkpoint $(RUNS)/fcnn_demo/best.pt
	@# the demo pair's unseen validation image (absent when $(DATA_ROOT)/fcnn holds real data)
	if [ -f $(DATA_ROOT)/fcnn/extra/demo_val/rgb.png ]; then \
	  $(TORCH_PY) fcnn_rgb_gt/predict.py --checkpoint $(RUNS)/fcnn_demo/best.pt \
	    --data $(DATA_ROOT)/fcnn/extra/demo_val --out $(RUNS)/fcnn_demo/demo_val; fi

DEMO_TARGETS += demo-fcnn
TEST_TORCH += fcnn_rgb_gt

$(eval $(call task_rules,fcnn,fcnn_rgb_gt,fcnn,venv-torch,TORCH_PY))
