"""Ship segmentation on the Kaggle Airbus data: a tf.keras U-Net (train.py, test.py, bench.py)."""
import os


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ start-up messages out of the logs; call it before TensorFlow is first imported (the
    scripts parse their options first, so ``--help`` and a mistyped option answer without loading it)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
