"""Ship segmentation on the Kaggle Airbus data: a tf.keras U-Net (train.py, test.py, bench.py)."""
import importlib
import os
import sys
import tempfile

# what TensorFlow's C++ libraries print while they load, whatever TF_CPP_MIN_LOG_LEVEL says (absl's note that it
# logs to stderr before its initialisation, and oneDNN's info line, twice): dropped by quiet_tensorflow
IMPORT_NOISE = ("All log messages before absl::InitializeLog() is called", "oneDNN custom operations are on")


def quiet_tensorflow() -> None:
    """Import TensorFlow and Keras without their start-up noise: ``TF_CPP_MIN_LOG_LEVEL=2`` (errors only), and
    what the C++ libraries print while loading (:data:`IMPORT_NOISE`) filtered out of stderr; anything else they
    print is passed on. The scripts call it after parsing their options, so ``--help`` and a mistyped option
    answer without loading TensorFlow."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            importlib.import_module("tensorflow")
            importlib.import_module("keras")
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode(errors="replace")
            sys.stderr.write("".join(line for line in text.splitlines(keepends=True)
                                     if not any(noise in line for noise in IMPORT_NOISE)))
