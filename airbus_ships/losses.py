"""Loss, metrics and optimiser of the ship U-Net (registered, so ``.keras`` checkpoints reload in safe mode).

The loss and metrics take ``y_true`` (B, H, W, 1) in [0, 1] (soft targets allowed) and ``y_pred`` (B, H, W, 1)
probabilities.
"""
from __future__ import annotations

import keras
from keras import ops

from airbus_ships.model import LITE0_PREFIX

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


@keras.saving.register_keras_serializable(package="airbus_ships")
def bce_dice_loss(y_true, y_pred):
    """Binary cross-entropy (pixel-wise) + (1 - soft dice): BCE keeps gradients everywhere, dice counters the
    ~1:100 ship/sea pixel imbalance."""
    return _bce_dice(y_true, y_pred)


@keras.saving.register_keras_serializable(package="airbus_ships")
class SmallShipBceDiceLoss(keras.losses.Loss):
    """:func:`bce_dice_loss` whose cross-entropy weighs small ships more: ship pixels get
    ``1 + small_ship_weight * (1 - ship share of the window x window neighbourhood)``. A 50-pixel ship's pixels
    get about ``1 + 0.8 * small_ship_weight``, the inside of a large ship about 1 (its rim about half the boost):
    small ships, which batch dice and mean BCE barely notice, count more. With weight 0 it is
    :func:`bce_dice_loss`.
    """

    # loss terms that were tried and removed: a checkpoint that saved them at these values (off) still loads
    REMOVED_OFF = {"border_weight": 0.0, "border_width": 6, "lovasz_weight": 0.0}

    def __init__(self, small_ship_weight: float = 5.0, window: int = 15, name: str = "small_ship_bce_dice",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.small_ship_weight, self.window = float(small_ship_weight), int(window)

    def call(self, y_true, y_pred):
        if not self.small_ship_weight:
            return _bce_dice(y_true, y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)  # the weights need it float; _bce_dice's cast is then a no-op
        share = ops.average_pool(y_true, self.window, strides=1, padding="same")
        weight = 1.0 + self.small_ship_weight * y_true * (1.0 - share)
        return _bce_dice(y_true, y_pred, weight)

    def get_config(self):
        return {**super().get_config(), "small_ship_weight": self.small_ship_weight, "window": self.window}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        on = {k: config.pop(k) for k, off in cls.REMOVED_OFF.items() if config.get(k, off) != off}
        for key in cls.REMOVED_OFF:
            config.pop(key, None)
        if on:
            raise ValueError(f"this checkpoint's loss uses {on}: loss terms this code no longer has (only their "
                             f"off values {cls.REMOVED_OFF} load); load it with compile=False to predict")
        return cls(**config)


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


@keras.saving.register_keras_serializable(package="airbus_ships")
class EncoderScaledAdam(keras.optimizers.Adam):
    """Adam whose steps for the pretrained encoder's variables (layer names starting with ``prefix``) use
    ``encoder_lr_scale`` times the learning rate: the decoder learns at full speed while the ImageNet features
    are only adjusted. (Adam normalises gradients, so scaling the gradients would not do this.)"""

    def __init__(self, encoder_lr_scale: float = 1.0, prefix: str = LITE0_PREFIX, **kwargs):
        super().__init__(**kwargs)
        self.encoder_lr_scale, self.prefix = encoder_lr_scale, prefix

    def build(self, var_list):
        super().build(var_list)
        # update_step receives backend variables without names: remember the encoder's by their index
        self._encoder_indices = {self._get_variable_index(v) for v in var_list
                                 if any(part.startswith(self.prefix) for part in v.path.split("/"))}

    def update_step(self, gradient, variable, learning_rate):
        if self._get_variable_index(variable) in self._encoder_indices:
            learning_rate = ops.cast(learning_rate, variable.dtype) * self.encoder_lr_scale
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "encoder_lr_scale": self.encoder_lr_scale, "prefix": self.prefix}


CUSTOM_OBJECTS = {"bce_dice_loss": bce_dice_loss, "SmallShipBceDiceLoss": SmallShipBceDiceLoss,
                  "dice_coef": dice_coef, "iou_coef": iou_coef, "EncoderScaledAdam": EncoderScaledAdam}
