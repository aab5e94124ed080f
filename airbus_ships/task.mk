SHIPS_TRAIN_ARGS ?=
SHIPS_TEST_ARGS ?=
SHIPS_FIGURES := $(RUNS)/airbus_figures

.PHONY: train-ships test-ships predict-ships bench-ships demo-ships figures-ships

train-ships: venv-tf demo-data-ships  ## train the U-Net on $(DATA_ROOT)/airbus -> $(RUNS)/airbus (SHIPS_TRAIN_ARGS: more options)
	$(TF_PY) airbus_ships/train.py --data $(DATA_ROOT)/airbus --out $(RUNS)/airbus $(SHIPS_TRAIN_ARGS)

test-ships: venv-tf  ## predict + score the validation images of $(RUNS)/airbus -> $(RUNS)/airbus/test
	$(TF_PY) airbus_ships/test.py --data $(DATA_ROOT)/airbus --model $(RUNS)/airbus/model/best.keras \
	  --split $(RUNS)/airbus/split.csv --subset val --out $(RUNS)/airbus/test $(SHIPS_TEST_ARGS)

predict-ships: test-ships  ## the same as test-ships

bench-ships: venv-tf  ## 5-fold cross-validation on the real subset, ~2 h on 2 CPU cores (make bench-ships DATA_ROOT=../shared/data) -> benchmarks/airbus.json
	$(TF_PY) airbus_ships/bench.py --data $(DATA_ROOT)/airbus --out $(RUNS)/airbus_bench

demo-ships: venv-tf demo-data-ships  ## short train + test on the demo data -> $(RUNS)/airbus_demo
	$(TF_PY) airbus_ships/train.py --data $(DATA_ROOT)/airbus --out $(RUNS)/airbus_demo \
	  --epochs 2 --steps-per-epoch 12 --batch-size 4 --val-steps 1 --calib-images 6
	$(TF_PY) airbus_ships/test.py --data $(DATA_ROOT)/airbus --model $(RUNS)/airbus_demo/model/best.keras \
	  --split $(RUNS)/airbus_demo/split.csv --subset val --out $(RUNS)/airbus_demo/test

# the README figures: a short run on its own generated demo data (never $(DATA_ROOT), which may hold real images)
figures-ships: venv-tf  ## README figures (short demo-data run, benchmark record) -> airbus_ships/docs/
	$(TF_PY) -m airbus_ships.demo_data --out $(SHIPS_FIGURES)/data --force
	$(TF_PY) airbus_ships/train.py --data $(SHIPS_FIGURES)/data --out $(SHIPS_FIGURES) \
	  --epochs 8 --steps-per-epoch 6 --batch-size 4 --val-steps 1 --calib-images 6
	$(TF_PY) airbus_ships/test.py --data $(SHIPS_FIGURES)/data --model $(SHIPS_FIGURES)/model/best.keras \
	  --split $(SHIPS_FIGURES)/split.csv --subset val --out $(SHIPS_FIGURES)/test
	$(TF_PY) -m airbus_ships.figures --run $(SHIPS_FIGURES) --bench benchmarks/airbus.json --out airbus_ships/docs

DEMO_TARGETS += demo-ships
FIGURE_TARGETS += figures-ships
TEST_TF += airbus_ships

$(eval $(call task_rules,ships,airbus_ships,airbus,venv-tf,TF_PY))
