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


def _bce_dice(y_true, y_pred, pixel_weight=None):
    """(Weighted mean) pixel-wise binary cross-entropy + (1 - soft dice of the batch)."""
    y_true = ops.cast(y_true, y_pred.dtype)
    bce = keras.losses.binary_crossentropy(y_true, y_pred)  # (B, H, W)
    bce = ops.mean(bce) if pixel_weight is None else ops.sum(bce * pixel_weight[..., 0]) / ops.sum(pixel_weight)
    return bce + 1.0 - _dice(y_true, y_pred)


def lovasz_hinge(y_true, y_pred):
    """Lovasz hinge loss, per image and averaged: a convex surrogate of ``1 - IoU`` of each image's thresholded
    prediction, whose gradient weighs each pixel's hinge error by how much it changes that image's IoU (Berman et
    al. 2018, https://arxiv.org/abs/1705.08790; after the authors' reference code,
    https://github.com/bermanmaxim/LovaszSoftmax). Works on logits, recovered from the probabilities."""
    y_true = ops.cast(y_true, y_pred.dtype)
    batch = ops.shape(y_pred)[0]
    labels = ops.reshape(y_true, (batch, -1))
    p = ops.clip(ops.reshape(y_pred, (batch, -1)), 1e-6, 1.0 - 1e-6)
    logits = ops.log(p) - ops.log(1.0 - p)
    errors = 1.0 - logits * (2.0 * labels - 1.0)
    order = ops.argsort(-errors, axis=-1)  # largest error first
    errors_sorted = ops.take_along_axis(errors, order, axis=-1)
    gt_sorted = ops.take_along_axis(labels, order, axis=-1)
    # gradient of the Lovasz extension of the Jaccard loss at the sorted errors (no gradient flows through it)
    gts = ops.sum(gt_sorted, axis=-1, keepdims=True)
    intersection = gts - ops.cumsum(gt_sorted, axis=-1)
    union = gts + ops.cumsum(1.0 - gt_sorted, axis=-1)
    jaccard = 1.0 - intersection / union
    grad = ops.concatenate([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=-1)
    return ops.mean(ops.sum(ops.relu(errors_sorted) * ops.stop_gradient(grad), axis=-1))


@keras.saving.register_keras_serializable(package="airbus_ships")
def bce_dice_loss(y_true, y_pred):
    """Binary cross-entropy (pixel-wise) + (1 - soft dice): BCE keeps gradients everywhere, dice counters the
    ~1:100 ship/sea pixel imbalance."""
    return _bce_dice(y_true, y_pred)


@keras.saving.register_keras_serializable(package="airbus_ships")
class SmallShipBceDiceLoss(keras.losses.Loss):
    """:func:`bce_dice_loss` whose cross-entropy weighs pixels by where they lie, with two optional terms:

    * small ships: ship pixels get ``1 + small_ship_weight * (1 - ship share of the window x window
      neighbourhood)``. A 50-pixel ship's pixels get about ``1 + 0.8 * small_ship_weight``, the inside of a large
      ship about 1 (its rim about half the boost): small ships, which batch dice and mean BCE barely notice, count
      more.
    * ship borders: sea pixels within ``border_width`` px (chessboard distance) of a ship get
      ``1 + border_weight * (border_width + 1 - d) / border_width`` at distance ``d``: the full boost next to a ship,
      falling linearly to ``border_weight / border_width`` at ``border_width`` px. The sea right around a ship (the
      wake's head, the water between moored ships) is where the predicted outline goes wrong; the U-Net paper
      weighs the narrow gaps between touching objects the same way (Ronneberger et al. 2015, section 3,
      https://arxiv.org/abs/1505.04597).

    ``lovasz_weight`` adds that many times :func:`lovasz_hinge` (each image's IoU). With all weights 0 it is
    :func:`bce_dice_loss`.
    """

    def __init__(self, small_ship_weight: float = 5.0, window: int = 15, border_weight: float = 0.0,
                 border_width: int = 6, lovasz_weight: float = 0.0, name: str = "small_ship_bce_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.small_ship_weight, self.window = float(small_ship_weight), int(window)
        self.border_weight, self.border_width = float(border_weight), int(border_width)
        self.lovasz_weight = float(lovasz_weight)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)  # the weights need it float; _bce_dice's cast is then a no-op
        weight = 1.0
        if self.small_ship_weight:
            share = ops.average_pool(y_true, self.window, strides=1, padding="same")
            weight = weight + self.small_ship_weight * y_true * (1.0 - share)
        if self.border_weight and self.border_width > 0:
            # the sea within r px of a ship is max_pool(2r + 1) - mask; summed over r = 1..width it counts
            # width + 1 - d for a pixel at distance d
            rings = sum(ops.max_pool(y_true, 2 * r + 1, strides=1, padding="same") - y_true
                        for r in range(1, self.border_width + 1))
            weight = weight + self.border_weight / self.border_width * rings
        loss = _bce_dice(y_true, y_pred, None if isinstance(weight, float) else weight)
        return loss + self.lovasz_weight * lovasz_hinge(y_true, y_pred) if self.lovasz_weight else loss

    def get_config(self):
        return {**super().get_config(), "small_ship_weight": self.small_ship_weight, "window": self.window,
                "border_weight": self.border_weight, "border_width": self.border_width,
                "lovasz_weight": self.lovasz_weight}


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


CUSTOM_OBJECTS = {"bce_dice_loss": bce_dice_loss, "SmallShipBceDiceLoss": SmallShipBceDiceLoss,
                  "dice_coef": dice_coef, "iou_coef": iou_coef}
