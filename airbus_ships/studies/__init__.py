"""One-off studies of the ship segmentation (see README.md): not imported by train.py, test.py or bench.py."""
