# fcnn_rgb_gt: the brief's small FCN on one aerial rgb.png/gt.png pair. Included by the root Makefile.
FCNN_TRAIN_ARGS ?=
FCNN_PREDICT_ARGS ?=
# the training pair: $(DATA_ROOT)/fcnn itself, or its train_substitute/ when only that holds rgb.png (expanded when a
# recipe runs, after demo-data-fcnn, which writes only into an empty $(DATA_ROOT)/fcnn)
FCNN_TRAIN_SUBSTITUTE = $(if $(wildcard $(DATA_ROOT)/fcnn/rgb.png),,$(wildcard $(DATA_ROOT)/fcnn/train_substitute/rgb.png))
FCNN_DATA = $(if $(FCNN_TRAIN_SUBSTITUTE),$(DATA_ROOT)/fcnn/train_substitute,$(DATA_ROOT)/fcnn)
# the pair the demo figures show: the demo's unseen image, else the training pair
FCNN_DEMO_VAL = $(DATA_ROOT)/fcnn/extra/demo_val
FCNN_FIGURE_PAIR = $(if $(wildcard $(FCNN_DEMO_VAL)/rgb.png),$(FCNN_DEMO_VAL),$(FCNN_DATA))

.PHONY: train-fcnn predict-fcnn bench-fcnn demo-fcnn figures-fcnn

train-fcnn: venv-torch demo-data-fcnn  ## train on $(DATA_ROOT)/fcnn (rgb.png + gt.png, or its train_substitute/) -> $(RUNS)/fcnn
	$(TORCH_PY) fcnn_rgb_gt/train.py --data $(FCNN_DATA) --out $(RUNS)/fcnn $(FCNN_TRAIN_ARGS)

$(RUNS)/fcnn/best.pt:
	$(MAKE) train-fcnn

predict-fcnn: venv-torch demo-data-fcnn $(RUNS)/fcnn/best.pt  ## predict the training image -> $(RUNS)/fcnn/predictions.jpg (+ mask, overlay)
	$(TORCH_PY) fcnn_rgb_gt/predict.py --checkpoint $(RUNS)/fcnn/best.pt --data $(FCNN_DATA) $(FCNN_PREDICT_ARGS)

bench-fcnn: venv-torch  ## real data (DATA_ROOT=../shared/data): the default trained on each Dubai pair, scored on the others (3 seeds) -> benchmarks/fcnn.json, fcnn_rgb_gt/docs/dubai_*.png
	$(TORCH_PY) fcnn_rgb_gt/bench.py --data $(DATA_ROOT)/fcnn --runs $(RUNS)/fcnn_bench --out benchmarks/fcnn.json

demo-fcnn: venv-torch demo-data-fcnn  ## short train + predict on the demo pair and its unseen image (80 s on 2 loaded cores)
	$(TORCH_PY) fcnn_rgb_gt/train.py --data $(FCNN_DATA) --out $(RUNS)/fcnn_demo --epochs 6 --tile 128
	$(TORCH_PY) fcnn_rgb_gt/predict.py --checkpoint $(RUNS)/fcnn_demo/best.pt
	@# the demo pair's unseen validation image (absent when $(DATA_ROOT)/fcnn holds real data)
	$(if $(wildcard $(FCNN_DEMO_VAL)/rgb.png),$(TORCH_PY) fcnn_rgb_gt/predict.py \
	  --checkpoint $(RUNS)/fcnn_demo/best.pt --data $(FCNN_DEMO_VAL) --out $(RUNS)/fcnn_demo/demo_val)

figures-fcnn: demo-fcnn  ## the demo run's loss curve and prediction -> fcnn_rgb_gt/docs/demo_*.png
	$(TORCH_PY) -m fcnn_rgb_gt.figures --run $(RUNS)/fcnn_demo --data $(FCNN_FIGURE_PAIR) --name demo

DEMO_TARGETS += demo-fcnn
FIGURE_TARGETS += figures-fcnn
TEST_TORCH += fcnn_rgb_gt

$(eval $(call task_rules,fcnn,fcnn_rgb_gt,fcnn,venv-torch,TORCH_PY))
