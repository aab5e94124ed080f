"""From a trained U-Net to ship instances: whole-image prediction, the ship / no-ship rule, its calibration.

Shared by train.py (which chooses the rule on its validation images, topped up with training images when they
are too few: :func:`choose_ship_rule`) and test.py (which applies it).
"""
from __future__ import annotations

import itertools
import json
import sys
import time
import weakref
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from airbus_ships.data import SIZE, ship_instances
from common.io import ImageReadError, read_rgb
from common.tiling import predict_tiled

POSTPROCESS_FILE = "postprocess.json"  # next to the checkpoints in model/
RULE_KEYS = ("threshold", "min_size", "min_confidence")  # a ShipRule's fields in that file


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


class ModelFileError(ValueError):
    """A model file that cannot be used; ``str(err)`` is ``"<path>: <reason>"`` in one line."""


def model_file_problem(path: str | Path) -> str | None:
    """``"<path>: <reason>"`` when ``path`` cannot be a ``.keras`` model (missing, a folder, empty, not a zip
    archive), else None: checked without TensorFlow."""
    path = Path(path)
    if not path.exists():
        return f"{path}: model not found (train.py --out RUN writes RUN/model/best.keras)"
    if path.is_dir():
        return f"{path}: is a folder, not a .keras model file"
    if path.stat().st_size == 0:
        return f"{path}: file is empty (0 bytes): not a model (a run killed while saving?)"
    if not zipfile.is_zipfile(path):
        return (f"{path}: not a .keras model (a .keras file is a zip archive; this one is not: cut short, or another "
                "kind of file?)")
    return None


def open_model(path: str | Path, compile: bool = False):
    """The Keras model saved in ``path`` (a ``.keras`` file of this package), checked to be a ship map
    network: images ``(H, W, 3)`` in, a ``(H, W, 1)`` map out. ``compile``: with the loss and optimizer state
    (train.py --resume). Safe mode: a Lambda layer (Python code in the file) is refused. Raises
    :class:`ModelFileError` naming the file and the reason in one line (no traceback for a bad file)."""
    import keras

    from airbus_ships.losses import CUSTOM_OBJECTS

    path = Path(path)
    why = model_file_problem(path)
    if why:
        raise ModelFileError(why)
    try:
        model = keras.saving.load_model(path, custom_objects=CUSTOM_OBJECTS, compile=compile, safe_mode=True)
    except (ValueError, KeyError, TypeError, AttributeError, OSError, IndexError, zipfile.BadZipFile) as err:
        text = str(err).strip().strip('"')
        if "Lambda" in text and "safe_mode" in text:
            reason = "it holds a Lambda layer (Python code), which is never loaded from a file (safe mode)"
        elif "config.json" in text:
            reason = "a zip archive without a Keras model in it (another program's file?)"
        else:
            reason = f"{type(err).__name__}: {text.splitlines()[0][:200] if text else 'no reason given'}"
        raise ModelFileError(f"{path}: cannot load the model: {reason}") from None
    shapes = [getattr(model, "input_shape", None), getattr(model, "output_shape", None)]
    if not (all(isinstance(sh, tuple) and len(sh) == 4 for sh in shapes)
            and shapes[0][-1] == 3 and shapes[1][-1] == 1):
        raise ModelFileError(f"{path}: not a ship map network: input {shapes[0]}, output {shapes[1]} (expected "
                             "(None, H, W, 3) images in and a (None, H, W, 1) map out)")
    return model


_FORWARD = weakref.WeakKeyDictionary()  # model -> its compiled forward pass


def compiled_forward(model):
    """``batch -> numpy probabilities`` through one ``tf.function`` per model (traced once per input shape family).

    About 1.8x faster than eager ``model(batch)`` calls on a CPU, same outputs (EXPERIMENTS.md: Speed). Not
    ``model.predict_on_batch``: under a multi-worker strategy it gathers across workers, and only the chief
    predicts here.
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


# test-time flips: the image as it is, flipped left-right, up-down and both (each its own inverse)
FLIPS = (lambda a: a, lambda a: a[:, ::-1], lambda a: a[::-1], lambda a: a[::-1, ::-1])


def predict_probs(model, image: np.ndarray, how: str = "auto", flips: bool = False) -> np.ndarray:
    """``(H, W)`` float32 ship probabilities of one ``(H, W, 3)`` uint8 image of any size.

    ``how``: "full" runs the fully-convolutional net once on the whole image (reflect-padded to a multiple of the
    network stride); "tile" uses :func:`common.tiling.predict_tiled` (256x256 tiles, 32 px overlap,
    raised-cosine blending, bounded memory); "auto" (default) is full up to :data:`FULL_MAX_PIXELS` pixels and
    tile above (:func:`resolve_how`). The net runs through :func:`compiled_forward`. ``flips``: the mean of the
    maps of the image and its three flips (:data:`FLIPS`, each map flipped back): 4x the time, the same memory.
    """
    if flips:
        return sum(flip(predict_probs(model, np.ascontiguousarray(flip(image)), how)) for flip in FLIPS) / len(FLIPS)
    h, w = image.shape[:2]
    if resolve_how(how, image.shape) == "tile":
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
    def load(cls, folder: str | Path) -> tuple[ShipRule, dict]:
        """The rule train.py chose (``folder/postprocess.json``) and the whole record saved with it (``how`` its
        maps were predicted, its score, the images); FileNotFoundError when there is none (the caller decides
        whether the defaults will do, and says so)."""
        path = Path(folder) / POSTPROCESS_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: no ship rule (train.py writes it after the fit; "
                                    f"train.py --out RUN --calibrate-only chooses it again)")
        try:
            cfg = json.loads(path.read_text())
            if cfg.get("image_confidence", 0):  # a gate train.py never chose and this code no longer has
                raise ValueError(f"image_confidence {cfg['image_confidence']}: the image gate was removed")
            return cls(**{k: cfg[k] for k in RULE_KEYS if k in cfg}), cfg
        except (OSError, ValueError, TypeError) as err:
            raise ValueError(f"{path}: cannot read the ship rule ({type(err).__name__}: {err}); train.py --out RUN "
                             "--calibrate-only writes it again") from None


def ships_from_probs(prob: np.ndarray, rule: ShipRule) -> list[np.ndarray]:
    """Split a ``(H, W)`` probability map into ship instances: a list of ``(H, W)`` bool masks."""
    from scipy import ndimage

    labels, n = ndimage.label(prob > rule.threshold, structure=np.ones((3, 3), bool))
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(np.ones_like(prob), labels, index)
    peaks = ndimage.maximum(prob, labels, index)
    keep = index[(sizes >= rule.min_size) & (peaks >= rule.min_confidence)]
    return [labels == i for i in keep]


# the grid calibrate_rule searches: probability thresholds, smallest ship areas (px), smallest peak probabilities
# (why these ranges: EXPERIMENTS.md, Post-processing)
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
    image_max: float        # highest probability in the image (studies/rule_study.py's image gate)


def component_stats(prob: np.ndarray, truth: list[np.ndarray], threshold: float) -> ComponentStats:
    """Label ``prob > threshold`` (8-connected, as :func:`ships_from_probs`) and compare with ``truth`` (bool masks)."""
    from scipy import ndimage

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


def kept_components(stats: ComponentStats, min_size: int, min_confidence: float) -> np.ndarray:
    """``(n,)`` bool: the components of ``stats`` that the rule keeps as ships."""
    return (stats.sizes >= min_size) & (stats.peaks >= min_confidence)


def rule_scores(stats: ComponentStats, min_size: int, min_confidence: float) -> tuple[float, bool, float | None]:
    """``(Kaggle F2, ship / no-ship decision right, dice or None without true ships)`` of one image under the rule
    (the components of ``stats`` with at least ``min_size`` pixels and a peak of at least ``min_confidence``).
    Same F2 as :func:`common.metrics.f2_image_score` on the masks of :func:`ships_from_probs`."""
    keep = kept_components(stats, min_size, min_confidence)
    n_pred, g = int(keep.sum()), stats.iou.shape[1]
    from common.metrics import f2_from_ious  # here, not above: it loads scikit-learn (slow for --help)
    f2 = f2_from_ious(stats.iou[keep])
    dice = 2 * int(stats.overlap[keep].sum()) / (int(stats.sizes[keep].sum()) + stats.truth_area) if g else None
    return f2, (n_pred > 0) == (g > 0), dice


def rule_table(probs: list[np.ndarray], truths: list[list[np.ndarray]], thresholds=THRESHOLDS,
               min_sizes=MIN_SIZES, confidences=CONFIDENCES) -> tuple[list[ShipRule], np.ndarray]:
    """Every rule of the grid and its Kaggle F2 on every ``(probability map, true ships)`` pair: ``(rules,
    (n_rules, n_images) F2)``, rules in grid order (the least restrictive first). Each image is labelled once per
    threshold (:func:`component_stats`), then every (size, peak) pair is scored from those statistics. Maps may
    be float16 (bench.py's out-of-fold maps); they are compared in float32."""
    from common.metrics import f2_from_ious

    rules, rows = [], []
    for t in thresholds:
        stats = [component_stats(np.asarray(p, np.float32), g, t) for p, g in zip(probs, truths)]
        known = [{} for _ in stats]  # per image: F2 of each set of kept components (many rules keep the same)
        for m, c in itertools.product(min_sizes, confidences):
            if c < t:
                continue
            rules.append(ShipRule(t, m, c))
            row = []
            for s, f2s in zip(stats, known):
                keep = kept_components(s, m, c)
                key = keep.tobytes()
                if key not in f2s:
                    f2s[key] = f2_from_ious(s.iou[keep])
                row.append(f2s[key])
            rows.append(row)
    return rules, np.array(rows, np.float64).reshape(len(rules), len(probs))


def best_rule(rules: list[ShipRule], f2: np.ndarray, images=None) -> tuple[ShipRule, float]:
    """The rule of :func:`rule_table` with the highest mean F2 over ``images`` (indices or a boolean mask; all by
    default), and that mean. Ties go to the least restrictive rule (earliest in the grid)."""
    means = (f2 if images is None else f2[:, images]).mean(axis=1)
    i = int(np.flatnonzero(means >= means.max() - 1e-9)[0])
    return rules[i], float(means[i])


def calibrate_rule(probs: list[np.ndarray], truths: list[list[np.ndarray]], thresholds=THRESHOLDS,
                   min_sizes=MIN_SIZES, confidences=CONFIDENCES) -> tuple[ShipRule, float]:
    """Grid-search the rule that maximises the Kaggle score on ``(probability map, true ships)`` pairs
    (:func:`rule_table`, :func:`best_rule`). Returns ``(rule, score)``."""
    return best_rule(*rule_table(probs, truths, thresholds, min_sizes, confidences))


def calibration_rows(val, train, n: int, seed: int):
    """The images the ship rule is chosen on: ``(val_rows, train_rows)``, at most ``n`` in all.

    Validation images first (a seeded sample of ``n`` when there are more); only when they are fewer than ``n``
    a seeded sample of training images tops them up. On full Kaggle data validation alone fills the default 200;
    on a small data set the rule chosen on a few validation images overfits them, and the network hardly
    overfits its training images (EXPERIMENTS.md: Post-processing).
    """
    val_rows = val.sample(min(len(val), n), random_state=seed)
    return val_rows, train.sample(min(len(train), n - len(val_rows)), random_state=seed)


def calibration_image(path: str) -> tuple[np.ndarray | None, str | None]:
    """``(image, None)`` for a readable 768x768 image, else ``(None, "<path>: why")``."""
    try:
        image = read_rgb(path)
    except ImageReadError as err:
        return None, str(err)
    if image.shape[:2] != (SIZE, SIZE):
        return None, f"{path}: image is {image.shape[1]}x{image.shape[0]}, not {SIZE}x{SIZE}"
    return image, None


def rule_seconds(model, calib: tuple, how: str, flips: bool) -> float:
    """Estimated seconds of :func:`choose_ship_rule` on ``calib`` (``(validation rows, training rows)``): one
    image's prediction (timed on the second call: the first traces the graph) x the number of images, +10% and
    15 s for loading and the plot. The first readable image is timed (choose_ship_rule reports the others)."""
    for path in itertools.chain(*(rows["path"] for rows in calib)):
        image, _ = calibration_image(path)
        if image is not None:
            break
    else:
        return 15.0  # no readable image: choose_ship_rule will stop with the reasons
    predict_probs(model, image, how)
    start = time.time()
    predict_probs(model, image, how, flips)
    return (time.time() - start) * sum(map(len, calib)) * 1.1 + 15


def choose_ship_rule(model, calib: tuple, how: str, flips: bool, model_dir: Path) -> ShipRule:
    """Pick threshold / minimum ship size / minimum confidence maximising the Kaggle score on ``calib``:
    ``(validation rows, training rows)`` from :func:`calibration_rows`, predicted ``how`` with or without
    ``flips`` (as test.py --how, --flips), and save it as ``model_dir/postprocess.json``. An image that cannot be
    read or is not 768x768 is reported by name and left out (recorded in postprocess.json)."""
    val_rows, train_rows = calib
    probs, truths, skipped, used = [], [], [], {"val": 0, "train": 0}
    for part, rows in (("val", val_rows), ("train", train_rows)):
        for row in rows.itertuples():
            image, why = calibration_image(row.path)
            if image is None:
                print(f"warning: ship rule: {why}; image skipped", file=sys.stderr)
                skipped.append(why)
                continue
            probs.append(predict_probs(model, image, how, flips))
            truths.append(ship_instances(row.rle))
            used[part] += 1
    if not probs:
        sys.exit(f"ship rule: none of the {len(skipped)} calibration images is usable (reasons above); "
                 f"{model_dir / POSTPROCESS_FILE} not written")
    rule, score = calibrate_rule(probs, truths)
    rule.save(model_dir, {"kaggle_score_on_calib": score, "n_images": len(probs), "n_val_images": used["val"],
                          "n_train_images": used["train"], "how": how, "flips": flips,
                          "skipped_images": skipped})
    print(f"ship rule on {used['val']} validation + {used['train']} training images: {rule} -> "
          f"Kaggle score {score:.3f}" + (f"; {len(skipped)} image(s) skipped" if skipped else ""))
    return rule
