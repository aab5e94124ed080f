"""U-Net for ship segmentation (Keras 3 functional API).

    encoder:    `depth` levels of [conv3x3-BN-ReLU] x 2, each followed by 2x2 max-pooling
    bottleneck: multi-level context block: parallel 3x3 convolutions with dilation rates (1, 2, 4, ...)
                at the lowest resolution, concatenated and fused by a 1x1 convolution (residual)
    decoder:    `depth` levels of 2x2 transposed convolution, concatenation with the encoder skip,
                [conv3x3-BN-ReLU] x 2
    head:       1x1 convolution with a sigmoid: per-pixel ship probability

The network is fully convolutional: it takes uint8 (or float 0..255) RGB images of any size whose sides are
multiples of 2**depth (256x256 crops for training, whole 768x768 images at test time) and returns a
``(B, H, W, 1)`` float32 probability map. Pixel scaling to [0, 1] happens inside the model, so callers feed
raw pixels.
"""
from __future__ import annotations

import math
from typing import Sequence

import keras
from keras import layers


BN_MOMENTUM = 0.9  # faster-moving BN statistics than Keras' 0.99: validation is usable after ~50 steps, not ~500


def batch_norm(name: str, synchronized: bool = False) -> layers.BatchNormalization:
    """BatchNormalization; ``synchronized``: statistics over the global batch of all replicas (tf.distribute), so
    every worker keeps the same moving averages."""
    return layers.BatchNormalization(momentum=BN_MOMENTUM, synchronized=synchronized, name=name)


def conv_block(x, filters: int, name: str, sync_bn: bool = False):
    """Two 3x3 convolutions, each followed by batch normalisation and ReLU."""
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = batch_norm(f"{name}_bn{i}", sync_bn)(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def multi_level_bottleneck(x, filters: int, rates: Sequence[int], name: str = "bottleneck", sync_bn: bool = False):
    """Parallel dilated 3x3 convolutions (one per rate) see several context sizes at the lowest resolution.

    The branches are concatenated, fused by a 1x1 convolution and added to the block input.
    """
    x = conv_block(x, filters, name, sync_bn)
    branches = []
    for r in rates:
        b = layers.Conv2D(filters, 3, padding="same", dilation_rate=r, use_bias=False, name=f"{name}_d{r}")(x)
        b = batch_norm(f"{name}_d{r}_bn", sync_bn)(b)
        branches.append(layers.Activation("relu", name=f"{name}_d{r}_relu")(b))
    y = layers.Concatenate(name=f"{name}_concat")(branches) if len(branches) > 1 else branches[0]
    y = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_fuse")(y)
    y = batch_norm(f"{name}_fuse_bn", sync_bn)(y)
    y = layers.Add(name=f"{name}_residual")([x, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def build_unet(
    widths: Sequence[int] = (16, 32, 64, 128),
    bottleneck_width: int | None = None,
    bottleneck_rates: Sequence[int] = (1, 2, 4),
    input_channels: int = 3,
    ship_prior: float = 0.01,
    sync_bn: bool = False,
    name: str = "unet",
) -> keras.Model:
    """Build the U-Net.

    Args:
        widths: filters of the encoder levels, top to bottom; ``len(widths)`` is the depth (number of
            2x poolings), so input sides must be multiples of ``2 ** len(widths)``.
        bottleneck_width: filters of the bottleneck (default: twice the last encoder width).
        bottleneck_rates: dilation rates of the parallel bottleneck branches.
        input_channels: 3 for RGB.
        ship_prior: initial output probability everywhere (the output bias starts at its logit): ships cover
            about 1% of the pixels, so training does not spend its first epochs unlearning p = 0.5.
        sync_bn: synchronized batch normalisation across replicas (multi-worker / multi-GPU training).
    Returns:
        a Keras model mapping ``(B, H, W, C)`` raw pixels (0..255) to ``(B, H, W, 1)`` probabilities.
    """
    if not widths:
        raise ValueError("widths must name at least one encoder level")
    bottleneck_width = bottleneck_width or 2 * widths[-1]
    inputs = keras.Input(shape=(None, None, input_channels), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="scale")(inputs)

    skips = []
    for i, w in enumerate(widths):  # encoder
        x = conv_block(x, w, f"enc{i}", sync_bn)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)

    x = multi_level_bottleneck(x, bottleneck_width, bottleneck_rates, sync_bn=sync_bn)

    for i, w in reversed(list(enumerate(widths))):  # decoder
        x = layers.Conv2DTranspose(w, 2, strides=2, padding="same", name=f"up{i}")(x)
        x = layers.Concatenate(name=f"skip{i}")([x, skips[i]])
        x = conv_block(x, w, f"dec{i}", sync_bn)

    bias = keras.initializers.Constant(math.log(ship_prior / (1.0 - ship_prior)))
    outputs = layers.Conv2D(1, 1, activation="sigmoid", bias_initializer=bias, dtype="float32",
                            name="ship_probability")(x)
    return keras.Model(inputs, outputs, name=name)
