"""Split a batch-inference job into N deterministic shards, and merge the shards' outputs back into one file.

Every predict/test script takes ``--shard I/N``: worker ``I`` (0-based) of ``N`` processes every N-th input of
the *sorted* input list, and writes its CSV/JSON under a shard name (``results.csv`` ->
``results.shard-0-of-2.csv``). When all N workers are done, one merge joins the shard files into exactly the
file a single worker would have written::

    python fcnn_rgb_gt/predict.py ... --shard 0/2 &  python fcnn_rgb_gt/predict.py ... --shard 1/2
    python -m common.shard merge runs/x/results.csv            # finds results.shard-*-of-2.csv beside it

The merge refuses an incomplete set of shards (a missing worker), duplicate keys (overlapping shards) and
shards with different CSV headers. Rows keep their order within a key, so a CSV with several rows per input
(one per Airbus ship) merges correctly; keys are sorted as plain strings, the order in which ``select_shard``
hands inputs out, so scripts must process their inputs in ``sorted(key)`` order.

Numpy-free and framework-free: runs in either virtual environment, or on a machine with only Python.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from common.io import atomic_write, dumps_json

T = TypeVar("T")
Shard = tuple[int, int]  # (index I, count N), 0 <= I < N

_SHARD_NAME = re.compile(r"^(?P<stem>.+)\.shard-(?P<i>\d+)-of-(?P<n>\d+)$")


def parse_shard(text: str) -> Shard:
    """``"I/N"`` -> ``(I, N)``; for argparse ``type=``. Raises ArgumentTypeError with a readable message."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise argparse.ArgumentTypeError(f"shard must look like I/N (e.g. 0/4), got {text!r}")
    i, n = int(match[1]), int(match[2])
    if n < 1 or i >= n:
        raise argparse.ArgumentTypeError(f"shard {text!r}: need 0 <= I < N")
    return i, n


def launcher_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` set by a launcher such as ``torchrun``; ``(0, 1, 0)`` without one."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def add_shard_argument(parser: argparse.ArgumentParser) -> None:
    """Add the standard ``--shard I/N`` option.

    Default: no sharding, or ``RANK/WORLD_SIZE`` when the script was started by ``torchrun`` with more than
    one process, so ``torchrun --nproc_per_node=N predict.py ...`` splits the inputs by itself.
    """
    rank, world, _ = launcher_env()
    parser.add_argument("--shard", type=parse_shard, default=(rank, world) if world > 1 else None,
                        metavar="I/N",
                        help="process only shard I of N (0-based) of the sorted inputs; outputs get a "
                             ".shard-I-of-N suffix; join them with `python -m common.shard merge OUT` "
                             "(default: RANK/WORLD_SIZE under torchrun, else everything)")


def select_shard(items: Iterable[T], shard: Shard | None, key: Callable[[T], str] = str) -> list[T]:
    """The sorted ``items`` (by ``key``) that belong to ``shard``: every N-th one starting at I.

    Round-robin rather than contiguous blocks, so that shards get similar mixes when the inputs are sorted by
    something that correlates with cost (size, date). ``shard=None`` returns all items, sorted.
    """
    ordered = sorted(items, key=key)
    if shard is None:
        return ordered
    i, n = shard
    return ordered[i::n]


def shard_path(path: str | Path, shard: Shard | None) -> Path:
    """``results.csv`` -> ``results.shard-I-of-N.csv`` (unchanged when ``shard`` is None)."""
    path = Path(path)
    if shard is None:
        return path
    i, n = shard
    return path.with_name(f"{path.stem}.shard-{i}-of-{n}{path.suffix}")


def find_shards(path: str | Path) -> list[Path]:
    """The complete, ordered set of shard files of ``path`` that lie beside it.

    Raises:
        FileNotFoundError: no shard file, or some of the N shards are missing.
        ValueError: shard files of different N lie beside each other (runs with different worker counts).
    """
    path = Path(path)
    found: dict[int, dict[int, Path]] = {}
    for candidate in path.parent.glob(f"{path.stem}.shard-*-of-*{path.suffix}"):
        base = candidate.name[: len(candidate.name) - len(path.suffix)]
        match = _SHARD_NAME.match(base)
        if match and match["stem"] == path.stem:
            found.setdefault(int(match["n"]), {})[int(match["i"])] = candidate
    if not found:
        raise FileNotFoundError(f"{path}: no shard files {path.stem}.shard-I-of-N{path.suffix} beside it")
    if len(found) > 1:
        raise ValueError(f"{path}: shard files from runs with different worker counts {sorted(found)}; "
                         "remove the stale ones")
    (n, shards), = found.items()
    missing = [i for i in range(n) if i not in shards]
    if missing:
        raise FileNotFoundError(f"{path}: shard(s) {missing} of {n} missing; has every worker finished?")
    return [shards[i] for i in range(n)]


def merge_csv(shard_files: Sequence[str | Path], out: str | Path, key: str | None = None) -> int:
    """Join shard CSVs into ``out``; rows stably sorted by column ``key`` (default: the first column).

    Returns the number of data rows written. Raises ValueError on differing headers or on a key that occurs
    in more than one shard.
    """
    header: list[str] | None = None
    newline = "\r\n"  # keep the line ending the workers wrote (csv module: \r\n, pandas: \n)
    rows: list[list[str]] = []
    owner: dict[str, Path] = {}
    for shard_file in map(Path, shard_files):
        with open(shard_file, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            this_header = next(reader, None)
            if this_header is None:
                raise ValueError(f"{shard_file}: empty file (no CSV header)")
            if header is None:
                header = this_header
                with open(shard_file, "rb") as raw:  # the header line tells the line ending
                    newline = "\r\n" if raw.readline().endswith(b"\r\n") else "\n"
                column = header.index(key) if key is not None else 0
            elif this_header != header:
                raise ValueError(f"{shard_file}: header {this_header} differs from {header}")
            keys_here = set()
            for row in reader:
                k = row[column]
                if k in owner and owner[k] != shard_file:
                    raise ValueError(f"{shard_file}: key {k!r} also in {owner[k]}; shards overlap")
                keys_here.add(k)
                rows.append(row)
            owner.update({k: shard_file for k in keys_here})
    if header is None:
        raise ValueError("no shard files to merge")
    rows.sort(key=lambda row: row[column])  # stable: keeps the per-key row order of its shard
    with atomic_write(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator=newline)
        writer.writerow(header)
        writer.writerows(rows)
    return len(rows)


def merge_json(shard_files: Sequence[str | Path], out: str | Path | None, indent: int = 2) -> dict:
    """Join shard JSON objects (``{key: value}``) into one with keys sorted; write it to ``out`` (``None``:
    stdout) in ``dumps_json(obj, indent)`` form plus a newline (a NaN / Infinity of an older shard: null). Raises
    ValueError on duplicate keys."""
    merged: dict = {}
    owner: dict[str, Path] = {}
    for shard_file in map(Path, shard_files):
        obj = json.loads(Path(shard_file).read_text(encoding="utf-8"))
        if not isinstance(obj, dict):
            raise ValueError(f"{shard_file}: expected a JSON object, got {type(obj).__name__}")
        for k, v in obj.items():
            if k in owner:
                raise ValueError(f"{shard_file}: key {k!r} also in {owner[k]}; shards overlap")
            owner[k] = shard_file
            merged[k] = v
    merged = {k: merged[k] for k in sorted(merged)}
    text = dumps_json(merged, indent) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        with atomic_write(out, "w", encoding="utf-8") as f:
            f.write(text)
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.shard", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    merge = sub.add_parser("merge", help="join shard outputs into the file one worker would write")
    merge.add_argument("out", type=Path, help="the merged file to write (.csv or .json); its shards "
                                               "<stem>.shard-I-of-N<suffix> are looked up beside it")
    merge.add_argument("shards", nargs="*", type=Path,
                       help="explicit shard files instead of looking them up beside OUT")
    merge.add_argument("--key", default=None, help="CSV column the rows are ordered by (default: first)")
    args = parser.parse_args(argv)
    try:
        shards = args.shards or find_shards(args.out)
        if args.out.suffix.lower() == ".json":
            count = len(merge_json(shards, args.out))
        else:
            count = merge_csv(shards, args.out, key=args.key)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"merged {len(shards)} shards, {count} entries -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
