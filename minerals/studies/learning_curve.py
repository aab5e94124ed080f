"""Learning curve: train.py on a share of the training folds' photos, to see how accuracy grows with the data.

    python minerals/studies/learning_curve.py --share 0.5 -- --data runs/minerals_bench/samples \
        --out runs/minerals_exp/lc0.5_f0 --val-fold 0 --backbone efficientnet_lite0 --no-export

Everything after ``--`` goes to train.py unchanged. The share (0.1-1 in steps of 0.1) is stratified and
group-aware like the split: the first round(10 * share) of ten ``StratifiedGroupKFold`` folds of the training
rows (split seed as the folds); the validation fold stays whole. The share is written to ``<out>/study.json``.
Results: minerals/EXPERIMENTS.md ("a learning curve of the transfer model").
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from common.config import HelpFormatter
from common.io import write_json
from minerals import train


def subsample_rows(rows: list[dict], share: float, seed: int = 0) -> list[dict]:
    """The rows of about ``share`` of the photos (steps of 0.1), stratified and group-aware; 1 returns ``rows``."""
    from minerals.data import fold_indices

    keep = round(10 * share)
    if keep >= 10:
        return rows
    kept = set(np.concatenate(fold_indices(rows, 10, seed)[:keep]).tolist())
    return [r for i, r in enumerate(rows) if i in kept]


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    ours, theirs = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--share", type=float, required=True, help="share of the training photos, 0.1-1 (steps of 0.1)")
    args = p.parse_args(ours)
    if not 0.1 <= args.share <= 1:
        p.error(f"--share {args.share}: give a share in [0.1, 1] (steps of 0.1)")
    cfg = train.parse_args(theirs)
    seed = cfg.seed if cfg.split_seed < 0 else cfg.split_seed
    from minerals import data

    split_rows = data.split_rows

    def split_then_subsample(rows, n_folds, fold, split_seed):
        train_rows, val_rows = split_rows(rows, n_folds, fold, split_seed)
        return subsample_rows(train_rows, args.share, seed), val_rows

    data.split_rows = split_then_subsample  # train.make_loaders imports it from minerals.data when it runs
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    write_json(Path(cfg.out) / "study.json", {"share": args.share})
    return train.fit(cfg)[1]


if __name__ == "__main__":
    main()
