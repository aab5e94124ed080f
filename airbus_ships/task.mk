# airbus_ships: tf.keras U-Net ship segmentation (Kaggle Airbus). Included by the root Makefile.
#   make train-ships                 train on $(DATA_ROOT)/airbus into $(RUNS)/airbus (demo data on a fresh clone)
#   make test-ships                  predict + score the validation images (split.csv) of $(RUNS)/airbus
#   make bench-ships DATA_ROOT=../shared/data    fixed split of the real subset -> benchmarks/airbus.json
#   make demo-ships                  short train + test on the demo data (pretrained encoder; training 0.6-1.8 min on 2 cores)
#   make check-ships                 this package's tests only (make test runs them all); PYTEST_ARGS="-k name -x" narrows
SHIPS_TRAIN_ARGS ?=
SHIPS_TEST_ARGS ?=

.PHONY: train-ships test-ships predict-ships bench-ships demo-ships

train-ships: venv-tf demo-data-ships
	$(TF_PY) airbus_ships/train.py --data $(DATA_ROOT)/airbus --out $(RUNS)/airbus $(SHIPS_TRAIN_ARGS)

test-ships: venv-tf
	$(TF_PY) airbus_ships/test.py --data $(DATA_ROOT)/airbus --model $(RUNS)/airbus/model/best.keras \
	  --split $(RUNS)/airbus/split.csv --subset val --out $(RUNS)/airbus/test $(SHIPS_TEST_ARGS)

predict-ships: test-ships

bench-ships: venv-tf
	$(TF_PY) airbus_ships/bench.py --data $(DATA_ROOT)/airbus --out $(RUNS)/airbus_bench

demo-ships: venv-tf demo-data-ships
	$(TF_PY) airbus_ships/train.py --data $(DATA_ROOT)/airbus --out $(RUNS)/airbus_demo \
	  --epochs 2 --steps-per-epoch 12 --batch-size 4 --val-steps 1 --calib-images 6
	$(TF_PY) airbus_ships/test.py --data $(DATA_ROOT)/airbus --model $(RUNS)/airbus_demo/model/best.keras \
	  --split $(RUNS)/airbus_demo/split.csv --subset val --out $(RUNS)/airbus_demo/test

DEMO_TARGETS += demo-ships
TEST_TF += airbus_ships

$(eval $(call task_rules,ships,airbus_ships,airbus,venv-tf,TF_PY))
