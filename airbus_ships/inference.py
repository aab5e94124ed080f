"""From a trained U-Net to ship instances: whole-image prediction, the ship / no-ship rule, its calibration.

Shared by train.py (which chooses the rule on its validation images, topped up with training images when they
are too few) and test.py (which applies it).
"""
from __future__ import annotations

import itertools
import json
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from common.metrics import f2_from_ious
from common.tiling import predict_tiled

POSTPROCESS_FILE = "postprocess.json"  # next to the checkpoints in model/


def network_stride(model) -> int:
    """What input sides must be multiples of: the product of the strides of the decoder's up-sampling layers.

    A U-Net's decoder undoes every halving of its encoder, whatever the encoder (max-pooling in the scratch one,
    strided convolutions in EfficientNet-Lite0), so its transposed convolutions / up-samplings give the stride
    without knowing the encoder: 32 for both encoders here (5 levels), 1 for a network without any.
    """
    import keras
    stride = 1
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2DTranspose):
            stride *= int(layer.strides[0])
        elif isinstance(layer, keras.layers.UpSampling2D):
            stride *= int(layer.size[0])
    return stride


_FORWARD = weakref.WeakKeyDictionary()  # model -> its compiled forward pass


def compiled_forward(model):
    """``batch -> numpy probabilities`` through one ``tf.function`` per model (traced once per input shape family).

    Measured: 1.43 s per 768x768 image tiled (0.70 s whole) against 2.54 s for eager ``model(batch)`` calls,
    outputs equal to 1e-6 (2 CPU threads, the benchmark model; README: Speed). Not ``model.predict_on_batch``:
    under a multi-worker strategy it gathers across workers, and only the chief predicts here.
    """
    import tensorflow as tf

    if model not in _FORWARD:
        _FORWARD[model] = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True)
    fn = _FORWARD[model]
    return lambda batch: fn(batch).numpy()


# how="auto" runs the whole image at once up to this many pixels (Kaggle's 768x768 and up to 1024x1024: no more
# than one batch of 16 tiles of 256x256 holds, so the peak memory stays that of tiling) and tiles larger images
FULL_MAX_PIXELS = 1024 * 1024
HOWS = ("auto", "full", "tile")


def resolve_how(how: str, shape: tuple[int, ...]) -> str:
    """"full" or "tile" for an image of ``shape`` (H, W, ...): ``how`` itself, or for "auto" full up to
    :data:`FULL_MAX_PIXELS` pixels, tiled above."""
    if how not in HOWS:
        raise ValueError(f"how must be one of {HOWS}, got {how!r}")
    if how != "auto":
        return how
    return "full" if shape[0] * shape[1] <= FULL_MAX_PIXELS else "tile"


def predict_probs(model, image: np.ndarray, how: str = "auto", input_mode: str = "crop",
                  input_size: int = 256, tta: bool = False, zoom: int = 1) -> np.ndarray:
    """``(H, W)`` float32 ship probabilities of one ``(H, W, 3)`` uint8 image of any size.

    Args:
        how: "full" runs the fully-convolutional net once on the whole image (reflect-padded to a multiple of
            the network stride); "tile" uses :func:`common.tiling.predict_tiled` (256x256 tiles, 32 px
            overlap, raised-cosine blending); "auto" (default) is full up to :data:`FULL_MAX_PIXELS` pixels and
            tile above (:func:`resolve_how`). With the pretrained encoder full scored better than tile on the
            benchmark (README: Inference); with the former scratch encoder tile did.
        input_mode: how the model was trained: "crop" (full resolution) or "resize" (the whole image was
            downscaled to ``input_size``: predict on the downscaled image, upsample the probabilities).
        tta: test-time augmentation: average the predictions of the image and its three flips (4x slower).
        zoom: test-time zoom: predict on the image upsampled ``zoom`` times (bilinear), so that small ships look
            larger, and average the probabilities back over ``zoom x zoom`` blocks (``zoom ** 2`` x slower).

    The net runs through :func:`compiled_forward`.
    """
    if zoom > 1:
        import tensorflow as tf
        h, w = image.shape[:2]
        big = tf.image.resize(image[None], [h * zoom, w * zoom], method="bilinear").numpy()[0]
        big = np.clip(np.rint(big), 0, 255).astype(image.dtype)
        prob = predict_probs(model, big, how, input_mode, input_size, tta)
        return prob.reshape(h, zoom, w, zoom).mean(axis=(1, 3))
    if tta:
        flips = [lambda a: a, lambda a: a[:, ::-1], lambda a: a[::-1], lambda a: a[::-1, ::-1]]  # self-inverse
        return np.mean([f(predict_probs(model, np.ascontiguousarray(f(image)), how, input_mode, input_size))
                        for f in flips], axis=0)
    import tensorflow as tf  # local: keeps this module importable for numpy-only helpers

    h, w = image.shape[:2]
    how = resolve_how(how, image.shape)
    if input_mode == "resize":
        small = tf.image.resize(image[None].astype(np.float32), [input_size, input_size], method="area")
        prob = compiled_forward(model)(small)
        return tf.image.resize(prob, [h, w], method="bilinear").numpy()[0, ..., 0]
    if how == "tile":
        return predict_tiled(image, compiled_forward(model), tile=256, overlap=32, batch_size=16)[..., 0]
    s = network_stride(model)
    ph, pw = (-h) % s, (-w) % s
    padded = np.pad(image, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="reflect")
    prob = compiled_forward(model)(padded[None])[0, ..., 0]
    return prob[ph // 2:ph // 2 + h, pw // 2:pw // 2 + w]


@dataclass
class ShipRule:
    """Turns a probability map into ships: pixels above ``threshold`` form 8-connected components; a component
    is a ship when it has at least ``min_size`` pixels and its highest probability reaches ``min_confidence``.
    An image with no such component is a no-ship image (one empty submission row)."""

    threshold: float = 0.5
    min_size: int = 0
    min_confidence: float = 0.5

    def save(self, folder: str | Path, extra: dict | None = None) -> None:
        from common.io import write_json
        write_json(Path(folder) / POSTPROCESS_FILE, {**asdict(self), **(extra or {})})

    @classmethod
    def load(cls, folder: str | Path) -> tuple["ShipRule", dict]:
        """The rule train.py chose (``folder/postprocess.json``) and the whole record saved with it (``how`` its
        maps were predicted, its score, the images); FileNotFoundError when there is none (the caller decides
        whether the defaults will do, and says so)."""
        path = Path(folder) / POSTPROCESS_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: no ship rule (train.py writes it after the fit; "
                                    f"train.py --out RUN --calibrate-only chooses it again)")
        cfg = json.loads(path.read_text())
        return cls(**{k: cfg[k] for k in ("threshold", "min_size", "min_confidence") if k in cfg}), cfg


def ships_from_probs(prob: np.ndarray, rule: ShipRule) -> list[np.ndarray]:
    """Split a ``(H, W)`` probability map into ship instances: a list of ``(H, W)`` bool masks."""
    labels, n = ndimage.label(prob > rule.threshold, structure=np.ones((3, 3), bool))
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(np.ones_like(prob), labels, index)
    peaks = ndimage.maximum(prob, labels, index)
    keep = index[(sizes >= rule.min_size) & (peaks >= rule.min_confidence)]
    return [labels == i for i in keep]


# grid of calibrate_rule: measured with rule_study.py (EXPERIMENTS.md): areas up to 300 px and peaks up to 0.99 scored
# +0.02 Kaggle on the benchmark's test split over the former grid (thresholds 0.4-0.6, areas <= 80, peaks <= 0.95)
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
MIN_SIZES = (0, 10, 20, 40, 80, 150, 300)
CONFIDENCES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


@dataclass
class ComponentStats:
    """The components of one probability map above one threshold, measured against the true ships once, so
    that many (minimum size, minimum peak) rules are scored without labelling the image again."""

    sizes: np.ndarray       # (n,) pixels per component
    peaks: np.ndarray       # (n,) highest probability per component
    iou: np.ndarray         # (n, g) IoU of each component with each true ship
    overlap: np.ndarray     # (n,) pixels of each component on a true ship
    truth_area: int         # pixels of all true ships
    image_max: float        # highest probability in the image


def component_stats(prob: np.ndarray, truth: list[np.ndarray], threshold: float) -> ComponentStats:
    """Label ``prob > threshold`` (8-connected, as :func:`ships_from_probs`) and compare with ``truth`` (bool masks)."""
    labels, n = ndimage.label(prob > threshold, structure=np.ones((3, 3), bool))
    truth_labels = np.zeros(prob.shape, np.int64)
    for i, ship in enumerate(truth, start=1):
        truth_labels[ship] = i
    g = len(truth)
    inter = np.bincount((labels * (g + 1) + truth_labels).ravel(), minlength=(n + 1) * (g + 1))
    inter = inter.reshape(n + 1, g + 1)[1:, 1:]
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    truth_sizes = np.bincount(truth_labels.ravel(), minlength=g + 1)[1:]
    iou = inter / np.maximum(sizes[:, None] + truth_sizes[None, :] - inter, 1)
    peaks = np.asarray(ndimage.maximum(prob, labels, np.arange(1, n + 1)) if n else [], np.float64)
    return ComponentStats(sizes, peaks, iou, inter.sum(axis=1), int(truth_sizes.sum()), float(prob.max()))


def rule_scores(stats: ComponentStats, min_size: int, min_confidence: float) -> tuple[float, bool, float | None]:
    """``(Kaggle F2, ship / no-ship decision right, dice or None without true ships)`` of one image under the rule
    (the components of ``stats`` with at least ``min_size`` pixels and a peak of at least ``min_confidence``).
    Same F2 as :func:`common.metrics.f2_image_score` on the masks of :func:`ships_from_probs`."""
    keep = (stats.sizes >= min_size) & (stats.peaks >= min_confidence)
    n_pred, g = int(keep.sum()), stats.iou.shape[1]
    f2 = f2_from_ious(stats.iou[keep])
    dice = 2 * int(stats.overlap[keep].sum()) / (int(stats.sizes[keep].sum()) + stats.truth_area) if g else None
    return f2, (n_pred > 0) == (g > 0), dice


def calibrate_rule(probs: list[np.ndarray], truths: list[list[np.ndarray]], thresholds=THRESHOLDS,
                   min_sizes=MIN_SIZES, confidences=CONFIDENCES) -> tuple[ShipRule, float]:
    """Grid-search the rule that maximises the Kaggle score on ``(probability map, true ships)`` pairs.

    Each image is labelled once per threshold (:func:`component_stats`), then every (size, peak) pair is scored
    from those statistics. Ties go to the least restrictive rule (earliest in the grid). Returns ``(rule, score)``.
    """
    best, best_score = ShipRule(), -1.0
    for t in thresholds:
        stats = [component_stats(p, g, t) for p, g in zip(probs, truths)]
        for m, c in itertools.product(min_sizes, confidences):
            if c < t:
                continue
            score = float(np.mean([rule_scores(s, m, c)[0] for s in stats]))
            if score > best_score + 1e-9:
                best, best_score = ShipRule(t, m, c), score
    return best, best_score


def calibration_rows(val, train, n: int, seed: int, val_only: bool = False):
    """The images the ship rule is chosen on: ``(val_rows, train_rows)``, at most ``n`` in all.

    Validation images first (a seeded sample of ``n`` when there are more); only when they are fewer than ``n``
    (and not ``val_only``) a seeded sample of training images tops them up. On full Kaggle data validation alone
    fills the default 200; on the small benchmark split (22 validation images) the rule chosen on validation
    alone overfits, and the network hardly overfits its training images (EXPERIMENTS.md: Post-processing).
    """
    val_rows = val.sample(min(len(val), n), random_state=seed)
    top_up = 0 if val_only else min(len(train), n - len(val_rows))
    return val_rows, train.sample(top_up, random_state=seed)
