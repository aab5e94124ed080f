"""The light half of the minerals scripts: class names, train.py's options, where the default run lives.

Standard library only, so that every script parses its options (and answers ``--help``) before it imports
PyTorch, torchvision or scikit-learn (seconds on a loaded machine).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from common.config import HelpFormatter, add_config_args

MINERALS = ["biotite", "bornite", "chrysocolla", "malachite", "muscovite", "pyrite", "quartz"]
NEGATIVE = "negative"
CLASSES = MINERALS + [NEGATIVE]  # model outputs, in this order
# the ImageNet transfer backbones and their native input side (their pretraining resolution), px
TRANSFER_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
BACKBONES = ("orenet", *TRANSFER_SIZES)
DEVICES = ("auto", "cpu", "cuda")
PHOTOS_RECORD = "photos.txt"  # in a samples folder: the photos folder extract_samples.py read (one line)
# Temperature and threshold an all-photos run (train.py --val-fold -1) stores when no --calibration is given: fitted
# on held-out predictions of the backbone's default recipe at its last epoch (the all-photos run ships its last
# epoch). Where each comes from: "source" and minerals/EXPERIMENTS.md; bench.py --folds 5 fits them on the pooled
# out-of-fold predictions (its <name>_calibration.json).
CV_CALIBRATION: dict[str, dict] = {
    "orenet": {"temperature": 0.7229, "threshold": 0.29,
               "source": "bench.py --folds 5: the pooled out-of-fold predictions of the last epochs (200) of the "
                         "default recipe on folds 0-4 (1,059 held-out patches)"},
    "efficientnet_lite0": {"temperature": 0.6542, "threshold": 0.28,
                           "source": "bench.py --folds 5: the pooled out-of-fold predictions of the last epochs "
                                     "(15) of the transfer recipe (patches + whole photos) on folds 0-4 (1,059 "
                                     "held-out patches)"},
    "efficientnet_lite1": {"temperature": 0.6707, "threshold": 0.28,
                           "source": "bench.py --folds 5: the pooled out-of-fold predictions of the last epochs "
                                     "(15) of the transfer default (patches + whole photos) on folds 0-4 (1,059 "
                                     "held-out patches)"},
}  # --device of train.py, predict.py and evaluate.py

# The run the scripts use when no checkpoint is given: `make train-minerals`'s, else `make demo-minerals`'s
# (relative to the folder the scripts run from: the repository root).
RUN = Path("runs/minerals")
DEMO_RUN = Path("runs/minerals_demo")
RUN_CHECKPOINTS = (RUN / "train" / "best.pt", DEMO_RUN / "scratch" / "best.pt")


def default_checkpoint() -> Path:
    """The first of :data:`RUN_CHECKPOINTS` that exists (the trained run before the demo's); the trained run's
    path when neither does (the error then names it)."""
    return next((p for p in RUN_CHECKPOINTS if p.exists()), RUN_CHECKPOINTS[0])


@dataclass
class Config:
    data: str = "runs/minerals/samples"  # folder written by extract_samples.py (index.csv + patches/)
    out: str = "runs/minerals/train"  # run folder: checkpoints, logs, plots, graph
    backbone: str = "orenet"  # orenet (own, from scratch) | efficientnet_lite0/1/2 (ImageNet transfer)
    width: float = 1.0  # OreNet channel-width multiplier (0.82 M parameters at 1.0): smaller is faster
    freeze: int = 3  # transfer backbones: keep the stem and this many first block stages frozen (of 7)
    img_size: int = 0  # input side in px (0: 128 for orenet; a transfer backbone's pretraining side: 224, 240,
    #                   260 for efficientnet_lite0, lite1, lite2)
    epochs: int = 0  # passes over the training patches (0: 200 for orenet, 15 for the transfer backbones)
    time_budget_min: float = 27.0  # the whole run (data, training, validation, export) stays inside this: a few
    #                   timed steps before training say how long an epoch takes, and when `epochs` would not fit
    #                   the run plans fewer (the schedule then spans those); 0 = no limit. A resumed run keeps
    #                   the epochs it planned and stops before an epoch that would end past this (from its restart)
    batch_size: int = 48  # global batch: under torchrun each of the N processes takes batch_size // N
    photos: str = "auto"  # the photos the samples were extracted from (<class>/<image>): each training mineral
    #                   patch cut from a larger photo is joined by that whole photo, so the model learns both
    #                   inputs a user may pass (a tight patch or the whole photo); validation stays on the patches.
    #                   auto: for the transfer backbones the folder named in <data>/photos.txt (written by
    #                   extract_samples.py; the patches only when it is missing), for orenet none. "": patches only
    crop_scale: float = 0.25  # smallest area share of a patch kept by RandomResizedCrop
    drop_path: float = -1.0  # stochastic depth rate of the deepest block (-1: 0.1 for orenet, 0 for transfer)
    lr: float = 0.0  # peak OneCycle learning rate (0: 4e-3 for orenet, 2e-3 for a transfer model's new classifier)
    backbone_lr_scale: float = 0.0  # transfer: pretrained layers train at lr * this (0: 0.25; orenet: 1)
    weight_decay: float = 0.05  # AdamW decoupled weight decay
    label_smoothing: float = 0.1  # cross-entropy label smoothing (https://arxiv.org/abs/1512.00567)
    mix: float = -1.0  # share of batches mixed by MixUp (https://arxiv.org/abs/1710.09412) or CutMix
    #                   (https://arxiv.org/abs/1905.04899), half each; 0 = off (-1: 0.5 for orenet, 0 for
    #                   the transfer backbones)
    class_weight_power: float = 0.5  # class weight = (N / (K * n_class)) ** power: 0 = none, 1 = inverse freq.
    n_folds: int = 5  # the validation set is one fold of a stratified group k-fold
    val_fold: int = 0  # which fold (0 .. n_folds-1) validates, fits the temperature and chooses the threshold;
    #                   the others train. -1: none, every photo trains (the model to ship) for `epochs`, the number
    #                   chosen by cross-validation, and the last epoch is kept; temperature and threshold then come
    #                   from held-out predictions of cross-validation runs (--calibration)
    calibration: str = ""  # with --val-fold -1: calibration.json of cross-validation (bench.py --folds 5 writes the
    #                   fit on the pooled out-of-fold predictions, train.py one per validation-fold run) whose
    #                   temperature and threshold the checkpoint takes; empty: the backbone's CV_CALIBRATION
    split_seed: int = -1  # seed of the fold assignment (-1: --seed); keep it while changing --seed to see how far
    #                   a score moves between training seeds on one split
    seed: int = 0  # training seed (initial weights, batch order, augmentation) and, by default, the split's
    device: str = "auto"  # where to train (auto: cuda when available)
    threads: int = 2  # CPU threads (the machine is shared: keep it small)
    max_steps: int = 0  # stop after this many optimizer steps (a quick check that a setup runs); 0 = no limit
    resume: str = ""  # a last.pt to continue from
    export: bool = True  # export model.onnx + model_summary.txt at the end

    def resolve(self) -> Config:
        transfer = self.backbone in TRANSFER_SIZES
        self.img_size = self.img_size or TRANSFER_SIZES.get(self.backbone, 128)
        self.epochs = self.epochs or (15 if transfer else 200)
        self.mix = (0.0 if transfer else 0.5) if self.mix < 0 else self.mix
        self.lr = self.lr or (2e-3 if transfer else 4e-3)
        self.backbone_lr_scale = self.backbone_lr_scale or (0.25 if transfer else 1.0)
        self.drop_path = (0.0 if transfer else 0.1) if self.drop_path < 0 else self.drop_path
        if self.photos == "auto":
            record = Path(self.data) / PHOTOS_RECORD
            self.photos = record.read_text(encoding="utf-8").strip() if transfer and record.is_file() else ""
        return self


def parse_args(argv=None, description: str = "") -> Config:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=HelpFormatter)
    add_config_args(p, Config, choices={"backbone": BACKBONES, "device": DEVICES})
    cfg = Config(**vars(p.parse_args(argv))).resolve()
    for problem in config_problems(cfg):
        p.error(problem)
    return cfg


def config_problems(cfg: Config) -> list[str]:
    """Option values (after ``resolve``) a run cannot train with, each naming its option (NaN fails every
    comparison, so it is refused with the rest)."""
    rules = {  # field: (allowed, what to give)
        "epochs": (cfg.epochs >= 1, "at least 1 (0: the backbone's default)"),
        "img_size": (cfg.img_size >= 1, "a positive side in px (0: the backbone's default)"),
        "batch_size": (cfg.batch_size >= 1, "at least 1"),
        "threads": (cfg.threads >= 1, "at least 1"),
        "n_folds": (cfg.n_folds >= 2, "at least 2 (one fold validates, the others train)"),
        "val_fold": (-1 <= cfg.val_fold < cfg.n_folds,
                     f"a fold 0..{cfg.n_folds - 1} of --n-folds {cfg.n_folds}, or -1 (none: every photo trains)"),
        "width": (cfg.width > 0, "a positive multiplier"),
        "freeze": (cfg.freeze >= 0, "0 or more stages"),
        "time_budget_min": (cfg.time_budget_min >= 0, "minutes >= 0 (0: no limit)"),
        "crop_scale": (0 < cfg.crop_scale <= 1, "an area share in (0, 1]"),
        "drop_path": (0 <= cfg.drop_path < 1, "a rate in [0, 1) (-1: the backbone's default)"),
        "lr": (cfg.lr > 0, "a positive rate (0: the backbone's default)"),
        "backbone_lr_scale": (cfg.backbone_lr_scale > 0, "a positive factor (0: the backbone's default)"),
        "weight_decay": (cfg.weight_decay >= 0, "0 or more"),
        "label_smoothing": (0 <= cfg.label_smoothing < 1, "a share in [0, 1)"),
        "mix": (0 <= cfg.mix <= 1, "a share of batches in [0, 1] (-1: the backbone's default)"),
        "class_weight_power": (cfg.class_weight_power >= 0, "0 or more (0: no class weights)"),
        "max_steps": (cfg.max_steps >= 0, "0 or more (0: no limit)"),
        "seed": (0 <= cfg.seed < 2**32, "0 .. 2**32-1 (numpy's seeds)"),
        "split_seed": (-1 <= cfg.split_seed < 2**32, "0 .. 2**32-1, or -1: --seed"),
    }
    return [f"--{name.replace('_', '-')} {getattr(cfg, name)}: give {what}" for name, (ok, what) in rules.items()
            if not ok]
