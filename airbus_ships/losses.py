"""Loss and metrics of the ship U-Net (registered, so ``.keras`` checkpoints reload in safe mode).

All take ``y_true`` (B, H, W, 1) in [0, 1] (soft targets allowed) and ``y_pred`` (B, H, W, 1) probabilities.
"""
from __future__ import annotations

import keras
from keras import ops

SMOOTH = 1.0  # keeps dice defined on crops without ships


def _dice(y_true, y_pred):
    """Dice of the whole batch as one volume (soft, differentiable)."""
    y_true = ops.cast(y_true, y_pred.dtype)
    inter = ops.sum(y_true * y_pred)
    return (2.0 * inter + SMOOTH) / (ops.sum(y_true) + ops.sum(y_pred) + SMOOTH)


@keras.saving.register_keras_serializable(package="airbus_ships")
def bce_dice_loss(y_true, y_pred):
    """Binary cross-entropy (pixel-wise) + (1 - soft dice): BCE keeps gradients everywhere, dice counters the
    ~1:100 ship/sea pixel imbalance."""
    bce = ops.mean(keras.losses.binary_crossentropy(ops.cast(y_true, y_pred.dtype), y_pred))
    return bce + 1.0 - _dice(y_true, y_pred)


@keras.saving.register_keras_serializable(package="airbus_ships")
def dice_coef(y_true, y_pred):
    """Dice of the thresholded (0.5) prediction over the batch."""
    return _dice(ops.cast(y_true > 0.5, "float32"), ops.cast(y_pred > 0.5, "float32"))


@keras.saving.register_keras_serializable(package="airbus_ships")
def iou_coef(y_true, y_pred):
    """Intersection over union of the thresholded (0.5) prediction over the batch."""
    t, p = ops.cast(y_true > 0.5, "float32"), ops.cast(y_pred > 0.5, "float32")
    inter = ops.sum(t * p)
    return (inter + SMOOTH) / (ops.sum(t) + ops.sum(p) - inter + SMOOTH)


CUSTOM_OBJECTS = {"bce_dice_loss": bce_dice_loss, "dice_coef": dice_coef, "iou_coef": iou_coef}
