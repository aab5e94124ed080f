"""The training input pipeline: an endless ``tf.data`` stream of ship-biased 256x256 crops of the mask table's
images, with the masks decoded from their RLE strings inside the graph, one image at a time (no mask table is
ever materialised), and one pipeline per worker under ``tf.distribute``.
"""
from __future__ import annotations

import os
import sys

import pandas as pd
import tensorflow as tf

from airbus_ships.data import SHIP_SEP, SIZE

LOAD_WORKERS = min(4, os.cpu_count() or 1)  # parallel JPEG + RLE decodes in the training pipeline


def _rle_runs(rle: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``(0-based starts, lengths)`` int64 of the runs of one checked RLE string (``"start length ..."``)."""
    values = tf.strings.to_number(tf.strings.split(rle), tf.int64)
    return values[0::2] - 1, values[1::2]


def tf_rle_decode(rle: tf.Tensor, size: int = SIZE) -> tf.Tensor:
    """Decode checked Kaggle RLE strings (several ships joined by ``SHIP_SEP``) to one ``(size, size)`` uint8
    mask in the TF graph."""
    starts, lengths = _rle_runs(tf.strings.regex_replace(rle, SHIP_SEP, " "))
    index = tf.ragged.range(starts, starts + lengths).flat_values
    flat = tf.scatter_nd(index[:, None], tf.ones_like(index, tf.uint8), [size * size])
    return tf.transpose(tf.reshape(tf.minimum(flat, 1), [size, size]))  # column-major numbering


def load_example(path: tf.Tensor, rle: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Read one JPEG and decode its mask: ``(768, 768, 3)`` uint8 and ``(768, 768, 1)`` uint8.

    :func:`airbus_ships.data.read_mask_table` has already dropped (and named) the images whose header, size or
    end it found wrong; a file that still fails to decode raises here and the pipeline's ``ignore_errors``
    skips it (its log line, hidden by ``TF_CPP_MIN_LOG_LEVEL=2``, does not name the file); one damaged inside
    its data decodes.
    """
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
    tf.debugging.assert_equal(tf.shape(image)[:2], [SIZE, SIZE],
                              message=tf.strings.join([path, ": image is not 768x768; skipped"]))
    image = tf.ensure_shape(image, [SIZE, SIZE, 3])
    return image, tf_rle_decode(rle)[..., None]


def crop_around_ships(image, mask, crop: int, ship_prob: float, seed: tf.Tensor):
    """A ``crop x crop`` window: with probability ``ship_prob`` (and when there is a ship) centred, with a random
    offset of up to a third of the crop, on a random ship pixel of ``mask`` (large ships then dominate);
    otherwise anywhere. Keeps ship pixels at full resolution. ``seed``: a stateless ``[2]`` seed (the window is
    a function of it)."""
    ship_pixels = tf.where(mask[..., 0] > 0)
    n = tf.shape(ship_pixels, out_type=tf.int64)[0]
    s_on, s_pixel, s_jitter, s_anywhere = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    on_ship = tf.logical_and(n > 0, tf.random.stateless_uniform([], s_on) < ship_prob)

    def centred():
        c = ship_pixels[tf.random.stateless_uniform([], s_pixel, 0, tf.maximum(n, 1), dtype=tf.int64)]
        jitter = tf.random.stateless_uniform([2], s_jitter, -crop // 3, crop // 3 + 1, dtype=tf.int64)
        return tf.clip_by_value(c + jitter - crop // 2, 0, SIZE - crop)

    def anywhere():
        return tf.random.stateless_uniform([2], s_anywhere, 0, SIZE - crop + 1, dtype=tf.int64)

    y0x0 = tf.cond(on_ship, centred, anywhere)
    y0, x0 = y0x0[0], y0x0[1]
    return image[y0:y0 + crop, x0:x0 + crop], mask[y0:y0 + crop, x0:x0 + crop]


def augment(image, mask, seed: tf.Tensor, hue_delta: float = 0.0):
    """Random flips, 90-degree rotations, light brightness / contrast / saturation changes and, with ``hue_delta``,
    a hue turned by up to that share of the colour circle: a function of the stateless ``[2]`` ``seed``."""
    s_rot, s_flip, s_bright, s_contrast, s_sat = tf.unstack(tf.random.experimental.stateless_split(seed, 5))
    k = tf.random.stateless_uniform([], s_rot, 0, 4, dtype=tf.int32)
    image, mask = tf.image.rot90(image, k), tf.image.rot90(mask, k)
    flip = tf.random.stateless_uniform([], s_flip) < 0.5
    image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
    mask = tf.cond(flip, lambda: tf.image.flip_left_right(mask), lambda: mask)
    x = tf.cast(image, tf.float32) / 255.0
    x = tf.image.stateless_random_brightness(x, 0.08, s_bright)
    x = tf.image.stateless_random_contrast(x, 0.85, 1.15, s_contrast)
    x = tf.image.stateless_random_saturation(x, 0.85, 1.15, s_sat)
    if hue_delta > 0:  # its own seed, folded in: the other draws stay those of a run without it
        x = tf.image.stateless_random_hue(x, hue_delta, tf.random.experimental.stateless_fold_in(seed, 5))
    return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0), tf.uint8), mask


def element_seeds(seed: int, index: tf.Tensor) -> tf.Tensor:
    """``(2, 2)`` stateless seeds of stream element ``index`` (crop, augmentation): the element's random choices
    depend on ``(seed, index)`` only, not on which parallel call draws first. (The element's seed is split three
    ways and the first part left unused, so the same seed gives the crops and augmentations it always gave.)"""
    base = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), index)
    return tf.random.experimental.stateless_split(base, 3)[1:]


def _stream(frame: pd.DataFrame, seed: int) -> tf.data.Dataset:
    """Endless ``(path, rle)`` strings of ``frame`` in a new random order every pass.

    The shuffle buffer holds row numbers (8 bytes each), not the strings: 200,000 rows cost 1.6 MB. The strings
    go to TensorFlow as a list (a fixed-width numpy ``str`` array would pad every RLE to the longest one:
    gigabytes on the Kaggle CSV).
    """
    paths, rles = tf.constant(frame["path"].tolist()), tf.constant(frame["rle"].tolist())
    order = tf.data.Dataset.range(len(frame)).shuffle(len(frame), seed=seed, reshuffle_each_iteration=True)
    return order.repeat().map(lambda i: (tf.gather(paths, i), tf.gather(rles, i)))


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def _balanced_stream(frame: pd.DataFrame, empty_share: float | None, seed: int) -> tf.data.Dataset:
    """``(path, rle)`` stream with ``empty_share`` ship-free images: 0 -> ship images only, 1 -> ship-free images
    only, None -> the data's own share. A share asks for images the frame lacks: ValueError for 0 and 1; in
    between, a warning, and the images there are."""
    if empty_share is None:
        return _stream(frame, seed)
    if not 0.0 <= empty_share <= 1.0:
        raise ValueError(f"empty_share must be within 0..1, got {empty_share}")
    has_ship = frame["n_ships"] > 0
    parts = [(frame[has_ship], 1.0 - empty_share, "ship"), (frame[~has_ship], empty_share, "ship-free")]
    wanted = [(f, w, kind) for f, w, kind in parts if w > 0]
    for f, _, kind in wanted:
        if f.empty:
            if len(wanted) == 1:
                raise ValueError(f"empty_share {empty_share:g} asks for {kind} images only, and there are none")
            _warn(f"empty_share {empty_share:g}: no {kind} images in the training data; sampling the others only")
    wanted = [(f, w) for f, w, _ in wanted if not f.empty]
    if len(wanted) == 1:
        return _stream(wanted[0][0], seed)
    return tf.data.Dataset.sample_from_datasets([_stream(f, seed + i) for i, (f, _) in enumerate(wanted)],
                                                weights=[w for _, w in wanted], seed=seed)


def make_dataset(frame: pd.DataFrame, batch_size: int, input_size: int = 256, empty_share: float | None = 0.25,
                 ship_crop_prob: float = 0.8, training: bool = True, seed: int = 0,
                 start: int = 0, hue_delta: float = 0.0) -> tf.data.Dataset:
    """Endless batches ``((B, s, s, 3) uint8 images, (B, s, s, 1) float32 masks)`` of full-resolution
    ``input_size`` crops of ``frame``'s images, biased to ships by ``ship_crop_prob``.

    The stream is a function of ``seed`` (and TensorFlow's global seed, which the shuffles use): the order of the
    images, and every crop and augmentation, whose random draws are stateless, seeded by ``(seed, element
    number)`` (:func:`element_seeds`), so the parallel maps give the same batches whichever call runs first.

    Args:
        empty_share: share of sampled images without ships: 0 ship images only, 1 ship-free images only, None
            the data's own share.
        training: augment (flips, turns, colour; ``hue_delta``: :func:`augment`); otherwise images are only cropped.
        start: elements of the stream to skip before the first batch, without reading them (``--resume``: the
            images this pipeline fed the stopped run, see :func:`make_datasets`, so a resumed run sees what the
            uninterrupted one would have seen; an image dropped as unreadable shifts it by one).
    """
    # (index, (path, rle)) -> (path, rle, seeds); skipping strings is cheap: nothing is decoded before the load map
    ds = _balanced_stream(frame, empty_share, seed).enumerate().skip(start)
    ds = ds.map(lambda i, row: (*row, element_seeds(seed, i)))

    def load(path, rle, seeds):
        return (*load_example(path, rle), seeds)

    def shape(image, mask, seeds):
        image, mask = crop_around_ships(image, mask, input_size, ship_crop_prob, seeds[0])
        if training:
            image, mask = augment(image, mask, seeds[1], hue_delta)
        return image, tf.cast(mask, tf.float32)

    # full 768x768 images are decoded by at most LOAD_WORKERS calls at once (bounded memory; far faster than
    # training consumes, EXPERIMENTS.md: Streaming check); the crops and augmentation after them are cheap.
    # Ordered maps: the batches are the same every run.
    ds = ds.map(load, num_parallel_calls=LOAD_WORKERS)
    ds = ds.ignore_errors(log_warning=True)
    ds = ds.map(shape, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(2)


def make_datasets(cfg, train: pd.DataFrame, val: pd.DataFrame, ctx: tf.distribute.InputContext,
                  epochs_done: int = 0) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """This input pipeline's training stream and fixed validation batches, per-replica batch size, for the
    settings ``cfg`` (train.py's Config). The training stream starts after the ``epochs_done`` epochs of images
    this pipeline has already fed (``--resume``).

    The pipeline samples an endless stream from an in-memory table (no files to split), so TensorFlow's
    auto-sharding is switched off: with several workers, each one builds its own pipeline over its own
    round-robin share of the images (``ctx.input_pipeline_id`` of ``ctx.num_input_pipelines``) with its own
    seed, like a DistributedSampler. Nothing is read twice and no worker decodes images another one drops.
    """
    n, i = ctx.num_input_pipelines, ctx.input_pipeline_id
    train, val = train.iloc[i::n], val.iloc[i::n]
    if train.empty or val.empty:
        sys.exit(f"input pipeline {i} of {n}: no training or validation image left in its share")
    global_batch = cfg.batch_size * ctx.num_replicas_in_sync
    batch = ctx.get_per_replica_batch_size(global_batch)
    fed = epochs_done * cfg.steps_per_epoch * (global_batch // n)  # images this pipeline fed before --resume
    train_ds = make_dataset(train, batch, cfg.input_size, cfg.empty_share, cfg.ship_crop_prob, training=True,
                            seed=cfg.seed + 1000 * i, start=fed, hue_delta=cfg.hue_delta)
    # fixed validation batches (same images and crops every epoch), kept at the data's own empty share
    val_ds = make_dataset(val, batch, cfg.input_size, None, cfg.ship_crop_prob, training=False,
                          seed=cfg.seed + 1 + 1000 * i).take(cfg.val_steps).cache()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return train_ds.with_options(options), val_ds.with_options(options)


def distributed_datasets(cfg, strategy: tf.distribute.Strategy, train: pd.DataFrame, val: pd.DataFrame,
                         epochs_done: int = 0):
    """Training and validation datasets for ``model.fit`` under ``strategy`` (plain datasets for one device)."""
    if cfg.strategy == "default":
        return make_datasets(cfg, train, val, tf.distribute.InputContext(), epochs_done)

    def part(k):
        def dataset_fn(ctx):
            return make_datasets(cfg, train, val, ctx, epochs_done)[k]
        return strategy.distribute_datasets_from_function(dataset_fn)

    return part(0), part(1)
