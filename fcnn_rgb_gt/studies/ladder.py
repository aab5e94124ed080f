"""Study: train variants of the default, or the default on a test pair itself (the oracle), and score each.

    python -m fcnn_rgb_gt.studies.ladder --data ../shared/data/fcnn                          # every variant, seed 0
    python -m fcnn_rgb_gt.studies.ladder --data ../shared/data/fcnn --variants plain_lr1e-3 --seeds 0 1 2
    python -m fcnn_rgb_gt.studies.ladder --data ../shared/data/fcnn --oracle                 # each pair on itself

A variant is train.py's default plus its flags, trained on ``train_substitute/`` without a time limit; its
``best.pt`` is scored on every ``extra/*`` pair at its stored threshold (bench.score_run), beside its held-out strip's
IoU. An oracle run trains the default on one test pair itself (its own strip held out and picking the epoch):
its score on that whole image, mostly seen in training, is what the network can fit there, a ceiling on
transfer. Rows are merged into ``--out`` (a JSON file, not benchmarks/) and printed as a markdown table.
The findings so far are in fcnn_rgb_gt/EXPERIMENTS.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common.io import write_json
from fcnn_rgb_gt.bench import TRAIN_PY, find_pairs, load_avg, score_run
from fcnn_rgb_gt.config import REPO_ROOT

# each variant changes the default by its flags; the choices a user still has
VARIANTS = {
    "default": [],
    "plain_lr1e-3": ["--plain", "--lr", "1e-3"],
    "plain": ["--plain"],
    "lr3e-3": ["--lr", "3e-3"],
    "lr1e-3": ["--lr", "1e-3"],
    "batch1_tile256": ["--batch-size", "1", "--tile", "256"],
    "batch16_tile64": ["--batch-size", "16", "--tile", "64"],
    "no_augment": ["--no-augment"],
}


def train(data: Path, out: Path, flags: list[str], seed: int, threads: int) -> float:
    cmd = [sys.executable, str(TRAIN_PY), "--data", str(data), "--out", str(out), "--max-minutes", "0",
           "--seed", str(seed), *flags, *(["--threads", str(threads)] if threads else [])]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return round(time.perf_counter() - t0, 1)


def table(rows: dict) -> str:
    """Markdown: one line per row (building IoU at the run's threshold), then mean [min-max] per variant over
    its seeds."""
    names = sorted({p for r in rows.values() for p in r["pairs"]})
    lines = ["| row | flags | threshold | strip | " + " | ".join(names) + " |",
             "|---|---|---|---|" + "---|" * len(names)]
    for key, r in sorted(rows.items()):
        lines.append(f"| {key} | `{r['flags']}` | {r.get('threshold', 0.5)} | {r['val_iou']} | "
                     + " | ".join(str(r["pairs"].get(n, {}).get("iou", "-")) for n in names) + " |")
    groups: dict[str, list[dict]] = {}
    for key, r in rows.items():
        groups.setdefault(key.rsplit("_seed", 1)[0], []).append(r)
    for variant, rs in sorted(groups.items()):
        if len(rs) > 1:
            cells = [[r["pairs"][n]["iou"] for r in rs if n in r["pairs"]] for n in names]
            lines.append(f"| {variant}, {len(rs)} seeds | | | {spread([r['val_iou'] for r in rs])} | "
                         + " | ".join(spread(c) if c else "-" for c in cells) + " |")
    return "\n".join(lines)


def spread(values: list[float]) -> str:
    return f"{np.mean(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder with train_substitute/ and extra/")
    p.add_argument("--runs", default=str(REPO_ROOT / "runs" / "fcnn_studies"), help="where the runs go")
    p.add_argument("--out", default=str(REPO_ROOT / "runs" / "fcnn_studies" / "ladder.json"), help="the rows")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME",
                   help="variants to train: " + ", ".join(VARIANTS))
    p.add_argument("--oracle", action="store_true", help="train the default on each test pair itself instead")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="one run per seed and variant")
    p.add_argument("--threads", type=int, default=0, help="train.py --threads (0: its default)")
    args = p.parse_args(argv)
    found = find_pairs(Path(args.data))
    if found is None:
        print(f"no real data at {args.data}", file=sys.stderr)
        return 2
    train_dir, pairs = found
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.is_file() else {}
    jobs = [(f"oracle_{d.name}", d, [], [d]) for d in pairs] if args.oracle else \
        [(v, train_dir, VARIANTS[v], pairs) for v in args.variants]
    for name, data, flags, scored in jobs:
        for seed in args.seeds:
            key = name if seed == 0 else f"{name}_seed{seed}"
            seconds = train(data, Path(args.runs) / key, flags, seed, args.threads)
            rows[key] = {"flags": " ".join(flags), "seed": seed, "train_seconds": seconds, "load_avg": load_avg(),
                         **score_run(Path(args.runs) / key, scored)}
            write_json(out, rows)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
