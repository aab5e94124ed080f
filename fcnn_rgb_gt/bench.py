"""Benchmark on the real data: train on train_substitute/, test on every extra/* pair, time and memory of predict.

    python fcnn_rgb_gt/bench.py --data ../shared/data/fcnn            # what `make bench-fcnn` runs
    python fcnn_rgb_gt/bench.py --data ../shared/data/fcnn --skip-train   # re-measure an existing run
    python fcnn_rgb_gt/bench.py --data ../shared/data/fcnn --ablate       # + the ablation ladder
    python fcnn_rgb_gt/bench.py --data ../shared/data/fcnn --skip-train --skip-predict-cost --oracle  # ceiling

Model selection (epoch, options, loss) uses only the held-out strip of the training image. The one choice the
strip cannot make, the threshold rule (0.5 or the strip's best), was made on the extra/* pairs (the issue's
validation pairs; the judges' pairs are elsewhere), with the ablation runs as evidence. Each ablation run and
each oracle run (the default network trained on a test pair itself: what it can fit there, an upper bound on
transfer) is scored on the validation strip and every extra/* pair at 0.5 and at the strip's threshold,
without and with test-time flip averaging (TTA). Writes ``benchmarks/fcnn.json`` (an existing "ablations" entry is kept
unless --ablate reruns it, the same for "oracle"). The ablation and oracle runs train with the settings their stored
rows were measured with (``LADDER_BATCH``: 8 crops of 128 px per step, the default before 2026-12-04), so that a rerun
of one variant joins the stored rows instead of replacing them.

Predict speed is compared with the network's FLOP bound: FLOPs of the four convolutions over the image's
pixels divided by this CPU's measured float32 matrix-multiply rate (torch.mm, same thread count).
Peak memory is the peak resident set size of a fresh process predicting the 2149x1479 training image and the
same image tiled 2x2 (4x the area). Seams: how far the tiled prediction of the training image is from one
untiled forward pass (a CPU reference only), with blended overlapping tiles and with plain ones.
Predict measurements run on the CPU (they are compared with the CPU's matrix-multiply rate); --device and --seed
go to the training runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common.demo import is_demo
from common.io import dumps_json, read_rgb, write_json
from common.metrics import iou, segmentation_report
from common.tiling import MAX_TILE, pad_to_grid, tile_grid
from fcnn_rgb_gt.data import REPO_ROOT, load_pair, read_gt, spatial_split
from fcnn_rgb_gt.infer import DEVICES, load_checkpoint, predict_probs, read_checkpoint, set_threads
from fcnn_rgb_gt.model import flops_per_pixel

TRAIN_PY = Path(__file__).with_name("train.py")
# the batch of the ablation ladder and the oracle runs: their stored rows were measured with the default before
# 2026-12-04, 8 crops of 128 px per step (twice the brief's memory limit, hence the flag); train.py's default is now
# 4 crops, which would make a rerun of one variant a different measurement from the rows it joins
LADDER_BATCH = ["--batch-size", "8", "--exceed-memory-limit"]
# ablation runs: the full default schedule each (16 epochs, seed 0, --ablate-seeds for more); each row changes one
# thing against a neighbour; the loss is always named, so the rows keep their meaning when the default changes
ABLATION_BUDGET = ["--max-minutes", "0", "--threshold", "-1", *LADDER_BATCH]  # epoch picked at the strip threshold
_OFF = ["--no-normalize", "--no-batch-norm", "--dropout", "0"]
ABLATIONS = {
    "plain_ce": ["--plain", "--loss", "ce"],
    "plain_wce": ["--plain", "--loss", "wce"],
    # the bare network collapses at the default lr 1e-2 (all background after epoch 1): its own lr is the fair base
    "plain_wce_lr3e-3": ["--plain", "--loss", "wce", "--lr", "3e-3"],
    "plain_wce_lr1e-3": ["--plain", "--loss", "wce", "--lr", "1e-3"],
    "plain_wce_dropout0.1": [*_OFF, "--dropout", "0.1", "--loss", "wce"],
    "normalize_wce": [*_OFF, "--normalize", "--loss", "wce"],
    "batchnorm_wce": [*_OFF, "--batch-norm", "--loss", "wce"],
    "normalize_batchnorm_wce": ["--loss", "wce"],
    "normalize_batchnorm_wce_lr3e-3": ["--loss", "wce", "--lr", "3e-3"],
    "normalize_batchnorm_wce_lr1e-3": ["--loss", "wce", "--lr", "1e-3"],
    "normalize_batchnorm_ce_dice": ["--loss", "ce_dice"],
    "normalize_batchnorm_wce_dropout0.1": ["--loss", "wce", "--dropout", "0.1"],
}


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def train_run(train_dir: Path, out: Path, extra_args: list[str], threads: int = 0, device: str = "auto") -> float:
    """Run train.py in a fresh process; return its wall time in seconds."""
    cmd = [sys.executable, str(TRAIN_PY), "--data", str(train_dir), "--out", str(out), *extra_args,
           *(["--threads", str(threads)] if threads else []), *(["--device", device] if device != "auto" else [])]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return round(time.perf_counter() - t0, 1)


def shown_train(data: str, train_args: list[str]) -> str:
    """A training run's command as benchmarks/fcnn.json stores it: what it measured (``--out``, ``--threads`` and
    ``--device``, where and how fast it ran, are left out)."""
    return " ".join(["python fcnn_rgb_gt/train.py --data", data, *train_args])


def ablation_flags(name: str, seed: int) -> tuple[list[str], str]:
    """``(flags, row name)`` of ablation variant ``name`` trained with ``seed``: row ``name`` for seed 0,
    ``name_seed<S>`` (``--seed S`` among the flags) otherwise. train.py runs with ``ABLATION_BUDGET + flags``."""
    return (ABLATIONS[name], name) if seed == 0 else ([*ABLATIONS[name], "--seed", str(seed)], f"{name}_seed{seed}")


def oracle_args(seed: int, extra: list[str]) -> list[str]:
    """train.py arguments (besides --data, --out) of an oracle run: the default network, the whole schedule,
    ``extra`` (--oracle-args), at the ladder's batch."""
    return ["--max-minutes", "0", *(["--seed", str(seed)] if seed else []), *extra, *LADDER_BATCH]


def evaluate_pairs(ckpt: Path, pairs: list[Path]) -> dict:
    model, state = load_checkpoint(ckpt, torch.device("cpu"))
    thr = float(state.get("threshold", 0.5))
    results = {}
    for d in pairs:
        image = read_rgb(d / "rgb.png")
        gt = read_gt(d / "gt.png", image.shape[:2], d / "rgb.png").astype(bool)
        t0 = time.perf_counter()
        prob = predict_probs(model, image)
        sec = time.perf_counter() - t0
        rep = segmentation_report(prob >= thr, gt)
        at05 = segmentation_report(prob >= 0.5, gt)
        tta = predict_probs(model, image, tta=True)
        results[d.name] = {"size": [image.shape[1], image.shape[0]], "threshold": thr,
                           **{k: round(v, 4) for k, v in rep.items()}, "iou_at_0.5": round(at05["iou"], 4),
                           "iou_tta": round(iou(tta >= thr, gt), 4), "predict_seconds": round(sec, 2)}
        print(f"  {d.name}: IoU {rep['iou']:.4f}  F1 {rep['f1']:.4f}  acc {rep['accuracy']:.4f}  ({sec:.1f}s)",
              flush=True)
    return results


def scores(model, image: np.ndarray, gt: np.ndarray, thresholds: dict[str, float]) -> dict:
    """Building IoU for each named threshold, without and with test-time flip averaging (``..._tta``)."""
    out = {}
    for tta in (False, True):
        prob = predict_probs(model, image, tta=tta)
        out.update({f"iou_{name}{'_tta' * tta}": round(iou(prob >= t, gt), 4) for name, t in thresholds.items()})
    return out


def pair_split(pair_dir: Path, val_fraction: float = 0.2):
    """``(image, building mask (bool), split)``: a pair and the spatial split train.py makes of it (same split
    function, same arguments)."""
    image, mask = load_pair(pair_dir / "rgb.png", pair_dir / "gt.png")
    return image, mask.astype(bool), spatial_split(mask, val_fraction, gap=16)


def validation_strip(pair_dir: Path, val_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """The held-out strip train.py keeps out of training."""
    image, mask, split = pair_split(pair_dir, val_fraction)
    return split.val(image), split.val(mask)


def score_run(run: Path, pairs: list[Path], strip: tuple[np.ndarray, np.ndarray]) -> dict:
    """A training run's best.pt scored on its validation strip and on ``pairs`` (whole images), at 0.5 and at the
    threshold that was best on the strip at the best epoch, without and with TTA."""
    model, st = load_checkpoint(run / "best.pt", torch.device("cpu"))
    row = st["history"][st["best_epoch"] - 1]
    thresholds = {"0.5": 0.5, "strip": float(row.get("strip_threshold", st["threshold"]))}
    res = {"best_epoch": st["best_epoch"], "strip_threshold": thresholds["strip"],
           "val_strip": scores(model, *strip, thresholds), "pairs": {}}
    for d in pairs:
        image = read_rgb(d / "rgb.png")
        gt = read_gt(d / "gt.png", image.shape[:2], d / "rgb.png").astype(bool)
        res["pairs"][d.name] = scores(model, image, gt, thresholds)
    print(f"  {run.name}: {dumps_json(res)}", flush=True)
    return res


def fit_check(run: Path, pair_dir: Path) -> dict:
    """What a run trained on ``pair_dir`` itself fits: building IoU at 0.5 of its best.pt and last.pt on the
    pixels it trained on (the training region) and on its own held-out strip: the network's capacity, apart
    from any transfer to a new image."""
    image, mask, split = pair_split(pair_dir)
    out = {}
    for name in ("best", "last"):
        model, st = load_checkpoint(run / f"{name}.pt", torch.device("cpu"))
        pred = predict_probs(model, image) >= 0.5
        out[name] = {"epoch": st["epoch"], "iou_training_region": round(iou(split.train(pred), split.train(mask)), 4),
                     "iou_own_strip": round(iou(split.val(pred), split.val(mask)), 4)}
    return out


def seam_check(ckpt: Path, image_path: Path, tile: int = MAX_TILE, overlap: int = 32) -> dict:
    """The tiled building probability of ``image_path`` against one untiled forward pass over the same padded
    image (CPU; the whole image at once, a reference that breaks the 256x256 limit on purpose): with blended
    overlapping tiles (predict.py's default) and with plain non-overlapping ones. Max and mean absolute
    difference, and the pixels whose class at 0.5 differs."""
    model, _ = load_checkpoint(ckpt, torch.device("cpu"))
    image = read_rgb(image_path)
    h, w = image.shape[:2]
    out = {}
    for name, ov in (("blended", overlap), ("plain", 0)):
        g = tile_grid(h, w, tile, ov)
        x = torch.from_numpy(pad_to_grid(image, g)).permute(2, 0, 1)[None].float().div_(255)
        with torch.inference_mode():
            logits = model(x.contiguous(memory_format=torch.channels_last))[0]
            ref = torch.sigmoid(logits[1] - logits[0]).numpy()[g.pad_top:g.pad_top + h, g.pad_left:g.pad_left + w]
        del x, logits
        prob = predict_probs(model, image, tile=tile, overlap=ov)
        diff = np.abs(prob - ref)
        out[name] = {"tile": tile, "overlap": ov, "max_abs_diff": round(float(diff.max()), 4),
                     "mean_abs_diff": float(f"{diff.mean():.2e}"),
                     "pixels_changed_class": int(((prob >= 0.5) != (ref >= 0.5)).sum()), "pixels": h * w}
        print(f"  seams, {name} tiles: {out[name]}", flush=True)
    return {"image": str(image_path), "size": [w, h], **out}


def matmul_gflops(n: int = 1024, reps: int = 10) -> tuple[float, float]:
    """Best float32 torch.mm rate over a few tries with the current thread count, as
    ``(GFLOP per wall second, GFLOP per CPU second of this process)``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    wall = cpu = float("inf")
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        torch.mm(a, b)
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return 2 * n ** 3 / wall / 1e9, 2 * n ** 3 / cpu / 1e9


def _vm_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_predict(ckpt: str, image_path: str, repeat: int, batch_size: int = 1) -> dict:
    """(Runs in a fresh process.) Time and peak memory of predicting ``image_path`` tiled ``repeat x repeat``.

    The peak is the resident-set high-water mark (VmHWM) reset just before the prediction (``clear_refs``), so it
    counts what predict itself allocates, not the image decoding before it. The float32 matmul rate is measured
    in the same process just before, under the same machine load.
    """
    set_threads(0)
    model, _ = load_checkpoint(ckpt, torch.device("cpu"))
    image = np.tile(read_rgb(image_path), (repeat, repeat, 1))
    predict_probs(model, image[:256, :256])  # warm-up (first-call allocations, oneDNN kernel choice)
    rate, rate_cpu = matmul_gflops()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    rss_before = _vm_kib("VmRSS") / 1024
    times, cpus = [], []
    for _ in range(2):  # best of two: the machine is shared, the minimum is the least disturbed run
        t0, c0 = time.perf_counter(), time.process_time()
        prob = predict_probs(model, image, batch_size=batch_size)
        pred = prob >= 0.5
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        del prob
    sec, cpu = min(times), min(cpus)
    peak = _vm_kib("VmHWM") / 1024
    h, w = image.shape[:2]
    flops = flops_per_pixel() * h * w
    grid = tile_grid(h, w, MAX_TILE, 32)  # predict_probs' default tiles
    return {"size": [w, h], "megapixels": round(h * w / 1e6, 2), "seconds": round(sec, 2),
            "tiles": len(grid), "tiled_pixels_over_image": round(len(grid) * MAX_TILE ** 2 / (h * w), 2),
            "rss_before_mib": round(rss_before, 1), "peak_rss_mib": round(peak, 1),
            "peak_increase_mib": round(peak - rss_before, 1),
            # full-size buffers a full-size output needs whatever the tiling: padded input copy (3 B/px),
            # blended accumulator + weight + result (3 x 4 B/px), mask (1 B/px)
            "image_sized_buffers_mib": round(h * w * 16 / 2 ** 20, 1),
            "gflops_image": round(flops / 1e9, 2), "matmul_gflops_per_s": round(rate, 1),
            "flop_bound_seconds": round(flops / (rate * 1e9), 2),
            "predict_over_flop_bound": round(sec / (flops / (rate * 1e9)), 2),
            # the same ratio in CPU seconds of this process: robust to the time other jobs hold the cores
            "cpu_seconds": round(cpu, 2), "matmul_gflops_per_cpu_s": round(rate_cpu, 1),
            "predict_over_flop_bound_cpu_time": round(cpu / (flops / (rate_cpu * 1e9)), 2),
            "building_fraction": round(float(pred.mean()), 4), "threads": torch.get_num_threads(),
            "batch_size": batch_size, "load_avg": load_avg()}


def predict_cost(ckpt: Path, image_path: Path) -> dict:
    runs = {}
    for name, repeat, batch in (("1x", 1, 1), ("4x_area", 2, 1), ("1x_batch8", 1, 8), ("4x_area_batch8", 2, 8)):
        cmd = [sys.executable, "-m", "fcnn_rgb_gt.bench", "--measure-predict", str(ckpt), str(image_path),
               str(repeat), str(batch)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO_ROOT).stdout
        runs[name] = json.loads(out.strip().splitlines()[-1])
        print(f"  predict {name}: {runs[name]}", flush=True)
    return {**runs, "flops_per_pixel": flops_per_pixel(),
            "flop_bound": "FLOPs of the four convolutions over the image's pixels / float32 torch.mm rate "
                          "(1024x1024, same threads, same process, just before); the 256 px tiles with 32 px "
                          "overlap process more pixels than the image has (tiled_pixels_over_image: 70 tiles = "
                          "1.44x for 2149x1479), which counts in the time, not in the bound"}


def markdown(report: dict) -> str:
    """The README's results tables from a benchmarks/fcnn.json report."""
    t = report["train"]
    lines = [f"Machine: {report['machine']}; load average at start {report['load_avg_at_start']}, "
             f"at end {report.get('load_avg_at_end')}.", "",
             f"Training (`{t['command']}`, defaults): {report.get('train_seconds')} s wall in all"
             + (f" (load average {report['train_load_avg']['start']} at its start, {report['train_load_avg']['end']} "
                f"at its end)" if "train_load_avg" in report else "") +
             f", {t['epochs_run']} epochs; best epoch {t['best_epoch']}, validation-strip IoU {t['val_iou_at_0.5']} "
             f"at 0.5 and {t['val_iou_at_threshold']} at the chosen threshold {t['threshold']}.", "",
             "| test pair (extra/*) | size | building IoU | F1 | precision | recall | pixel accuracy | IoU at 0.5 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in report["extra"].items():
        lines.append(f"| {name} | {r['size'][0]}x{r['size'][1]} | **{r['iou']}** | {r['f1']} | {r['precision']} | "
                     f"{r['recall']} | {r['accuracy']} | {r['iou_at_0.5']} |")
    seeds = report.get("default_seeds")
    if seeds:
        names = list(report["extra"])
        rows = {"0": {"val_iou_at_0.5": t["val_iou_at_0.5"], "best_epoch": t["best_epoch"],
                      "pairs": {n: report["extra"][n]["iou_at_0.5"] for n in names}}, **seeds}
        lines += ["", "The default configuration over seeds (building IoU at 0.5; seed 0 is the run above):", "",
                  "| seed | best epoch | validation strip | " + " | ".join(names) + " |",
                  "|---|---|---|" + "---|" * len(names)]
        for seed, r in rows.items():
            lines.append(f"| {seed} | {r['best_epoch']} | {r['val_iou_at_0.5']} | "
                         + " | ".join(str(r["pairs"][n]) for n in names) + " |")
        lines.append(f"| mean [min-max] | | {spread([r['val_iou_at_0.5'] for r in rows.values()])} | "
                     + " | ".join(spread([r["pairs"][n] for r in rows.values()]) for n in names) + " |")
    for key in ["predict", *sorted(k for k in report if k.startswith("predict_"))]:  # the latest, then kept ones
        pr = report.get(key)
        if not pr:
            continue
        lines += ["", (f"`{key}`: {pr['note']}" if pr.get("note") else f"`{key}`: this bench run") + ".", "",
                  "| predict | size | seconds | FLOP bound s (matmul GFLOP/s) | time / bound | RSS before MiB | "
                  "peak increase MiB | image-sized buffers MiB | load (1 min) |", "|---|---|---|---|---|---|---|---|---|"]
        for name in ("1x", "4x_area", "1x_batch8", "4x_area_batch8"):
            r = pr.get(name)
            if r:
                lines.append(f"| {name} (batch {r['batch_size']}) | {r['size'][0]}x{r['size'][1]} | {r['seconds']} | "
                             f"{r.get('flop_bound_seconds')} ({r.get('matmul_gflops_per_s')}) | "
                             f"{r.get('predict_over_flop_bound')} (CPU time: "
                             f"{r.get('predict_over_flop_bound_cpu_time')}) | {r['rss_before_mib']} | "
                             f"{r['peak_increase_mib']} | {r['image_sized_buffers_mib']} | {r['load_avg'][0]} |")
    seams = report.get("seams")
    if seams:
        b, pl = seams["blended"], seams["plain"]
        lines += ["", f"Seams ({seams['size'][0]}x{seams['size'][1]} training image, {b['tile']} px tiles, against one "
                  f"untiled forward pass): blended with {b['overlap']} px overlap, max |difference| "
                  f"{b['max_abs_diff']} in probability (mean {b['mean_abs_diff']}), {b['pixels_changed_class']} of "
                  f"{b['pixels']:,} pixels change class at 0.5; plain tiles {pl['max_abs_diff']} (mean "
                  f"{pl['mean_abs_diff']}), {pl['pixels_changed_class']} pixels."]
    abl = report.get("ablations")
    cell = lambda r: f"{r['iou_0.5']} / {r['iou_strip']} / {r['iou_0.5_tta']}"  # noqa: E731
    if abl:
        names = list(next(iter(abl["runs"].values()))["pairs"])
        lines += ["", f"Ablations (`{abl['command']}`; {abl['note']}). Each cell: building IoU at 0.5 / at the "
                  "strip's threshold / at 0.5 with flip TTA:", "",
                  "| variant | flags | strip threshold | validation strip | " + " | ".join(names) + " | s |",
                  "|---|---|---|---|" + "---|" * len(names) + "---|"]
        for name, r in abl["runs"].items():
            lines.append(f"| {name} | `{r['flags']}` | {r['strip_threshold']} | {cell(r['val_strip'])} | "
                         + " | ".join(cell(r["pairs"][n]) for n in names) + f" | {r['train_seconds']} |")
    if abl and any("_seed" in name for name in abl["runs"]):
        lines += ["", "Variants trained with several seeds: mean building IoU at 0.5 [min-max] over the seeds:", "",
                  "| variant | seeds | validation strip | " + " | ".join(names) + " |",
                  "|---|---|---|" + "---|" * len(names)]
        for variant, rows in seed_groups(abl["runs"]).items():
            if len(rows) > 1:
                lines.append(f"| {variant} | {len(rows)} | {spread([r['val_strip']['iou_0.5'] for r in rows])} | "
                             + " | ".join(spread([r["pairs"][n]["iou_0.5"] for r in rows]) for n in names) + " |")
    for key in sorted(k for k in report if k.startswith("oracle")):
        oracle = report[key]
        lines += ["", f"Oracle (`{oracle['command']}`): {oracle['what']}. Same cells, and the fit: IoU at 0.5 on "
                  "the pixels it trained on (training region / own strip) at the best and the last epoch:", "",
                  "| pair | trained on itself: whole image | its own held-out strip | fit, best epoch | "
                  "fit, last epoch | transfer (default model) |", "|---|---|---|---|---|---|"]
        fit = lambda f: f"{f['iou_training_region']} / {f['iou_own_strip']} (epoch {f['epoch']})"  # noqa: E731
        for name, r in oracle["runs"].items():
            t = report.get("extra", {}).get(name, {})
            f = r.get("fit")
            lines.append(f"| {name} | {cell(r['pairs'][name])} | {cell(r['val_strip'])} | "
                         f"{fit(f['best']) if f else '-'} | {fit(f['last']) if f else '-'} | "
                         f"{t.get('iou_at_0.5')} / - / {t.get('iou_tta')} |")
    return "\n".join(lines)


def variant_of(row_name: str) -> str:
    """The ablation variant of a row: ``name`` for both ``name`` (seed 0) and ``name_seed<S>``."""
    return row_name.split("_seed")[0]


def seed_groups(runs: dict) -> dict[str, list[dict]]:
    """Ablation rows grouped by variant: ``name`` and its ``name_seed<S>`` rows together."""
    groups: dict[str, list[dict]] = {}
    for name, r in runs.items():
        groups.setdefault(variant_of(name), []).append(r)
    return groups


def spread(values: list[float]) -> str:
    return f"{np.mean(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def measured(command: str) -> str:
    """``command`` without ``--threads N`` / ``--device D``: where and how fast a run went, not what it measured
    (:func:`shown_train` leaves them out; a stored command may name them, e.g. oracle_epochs_64's ``--threads 1``)."""
    words = command.split()
    for option in ("--threads", "--device"):
        while option in words:
            i = words.index(option)
            del words[i:i + 2]
    return " ".join(words)


def kept_rows(report: dict, key: str, command: str) -> dict:
    """The stored rows of ``report[key]`` that a rerun may join: all of them when they ran with the same command
    (:func:`measured`: thread count and device aside), none otherwise (a table's rows share one command; the old
    rows stay in git history)."""
    block = report.get(key, {})
    if block and measured(block.get("command", "")) != measured(command):
        print(f"{key}: the stored rows ran with `{block.get('command')}`, not `{command}`: they are replaced",
              flush=True)
        return {}
    return dict(block.get("runs", {}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO_ROOT / "data" / "fcnn"), help="folder with train_substitute/ and extra/")
    p.add_argument("--runs", default=str(REPO_ROOT / "runs" / "fcnn_bench"), help="where training runs go")
    p.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "fcnn.json"))
    p.add_argument("--skip-train", action="store_true", help="reuse <runs>/default/best.pt")
    p.add_argument("--ablate", nargs="*", default=None, metavar="NAME",
                   help="also run the ablation ladder (all, or the named ones; merged into --out): "
                        + ", ".join(ABLATIONS))
    p.add_argument("--ablate-seeds", nargs="+", type=int, default=[0], metavar="SEED",
                   help="train each --ablate variant once per seed (rows named <variant>_seed<S> for S != 0)")
    p.add_argument("--oracle", nargs="*", default=None, metavar="PAIR",
                   help="also train the default network on each extra/* pair itself (all, or the named ones): the "
                        "ceiling of transfer")
    p.add_argument("--oracle-args", default="", metavar="ARGS",
                   help="extra train.py arguments of the oracle runs, e.g. '--epochs 64' (a longer fit: does more "
                        "training lift the ceiling?); such rows go to 'oracle_<args>' in --out, not 'oracle'")
    p.add_argument("--threads", type=int, default=0,
                   help="train.py --threads of every training run (0: train.py's default; 1 on a shared machine)")
    p.add_argument("--seed", type=int, default=0,
                   help="train.py --seed of the default run and the oracle runs (ablations: --ablate-seeds)")
    p.add_argument("--default-seeds", nargs="+", type=int, default=None, metavar="SEED",
                   help="also train the default configuration with these seeds and score it on extra/* at 0.5 "
                        "(the default run's seed spread; merged into --out)")
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="train.py --device of every training run; predict measurements always run on the CPU "
                        "(compared with its matrix-multiply rate)")
    p.add_argument("--fit-check", action="store_true",
                   help="add the fit (training region / own strip IoU of best.pt and last.pt) to the stored oracle "
                        "rows whose run folders are still in --runs, and exit")
    p.add_argument("--skip-predict-cost", action="store_true", help="keep the stored predict time/memory figures")
    p.add_argument("--markdown", action="store_true", help="print the results tables of --out and exit")
    p.add_argument("--measure-predict", nargs="+", help=argparse.SUPPRESS)  # CKPT IMAGE REPEAT [BATCH]
    args = p.parse_args(argv)
    unknown = sorted(set(args.ablate or []) - set(ABLATIONS))
    if unknown:  # a mistyped name trained nothing and reported success
        p.error(f"--ablate: unknown variant(s) {', '.join(unknown)}; known: {', '.join(ABLATIONS)}")
    if args.measure_predict:
        ckpt, image, repeat, *batch = args.measure_predict
        print(dumps_json(measure_predict(ckpt, image, int(repeat), int(batch[0]) if batch else 1)))
        return 0

    if args.markdown:
        print(markdown(json.loads(Path(args.out).read_text())))
        return 0
    data = Path(args.data)
    train_dir = data / "train_substitute"
    if not (train_dir / "rgb.png").is_file() or is_demo(data) or is_demo(train_dir):
        print(f"bench-fcnn: skipped, no real data at {train_dir} (run: make bench-fcnn DATA_ROOT=../shared/data)")
        return 0
    extra_dir = data / "extra"
    pairs = sorted(d for d in extra_dir.iterdir() if (d / "rgb.png").is_file() and (d / "gt.png").is_file()
                   and not is_demo(d)) if extra_dir.is_dir() else []
    if not pairs:  # checked before any training (was a FileNotFoundError or min() traceback)
        print(f"error: {extra_dir}: no test pair (a folder holding rgb.png and gt.png) to score on", file=sys.stderr)
        return 2
    unknown = sorted(set(args.oracle or []) - {d.name for d in pairs})
    if unknown:  # checked before any training, like --ablate's names
        print(f"error: --oracle: no test pair {', '.join(unknown)} in {extra_dir} (there: "
              f"{', '.join(d.name for d in pairs)})", file=sys.stderr)
        return 2
    runs, out = Path(args.runs), Path(args.out)
    report = json.loads(out.read_text()) if out.is_file() else {}
    if args.fit_check:  # adds to stored rows only: the headline run's machine and load fields stay
        for key in (k for k in report if k.startswith("oracle")):
            for name, row in report[key]["runs"].items():
                run = runs / f"{key}_{name}"
                if (run / "last.pt").is_file():
                    row["fit"] = fit_check(run, data / "extra" / name)
                    print(f"  {key} {name}: {row['fit']}", flush=True)
        write_json(out, report)
        return 0
    report.update({"task": "fcnn_rgb_gt", "data": str(data), "load_avg_at_start": load_avg(),
                   "machine": f"{os.cpu_count()} CPU cores, shared with other jobs: compare the load averages"})

    default = runs / "default"
    if not args.skip_train:
        start = load_avg()
        report["train_seconds"] = train_run(train_dir, default, ["--seed", str(args.seed)], args.threads, args.device)
        report["train_load_avg"] = {"start": start, "end": load_avg()}
    ckpt, last = read_checkpoint(default / "best.pt"), read_checkpoint(default / "last.pt")
    seed_args = ["--seed", str(args.seed)] if args.seed else []
    report["train"] = {"command": shown_train("<data>/train_substitute", seed_args),
                       "config": ckpt["config"], "model_config": ckpt["model_config"],
                       "best_epoch": ckpt["best_epoch"],
                       "val_iou_at_0.5": ckpt["history"][ckpt["best_epoch"] - 1]["val_iou"],
                       "threshold": ckpt["threshold"], "val_iou_at_threshold": round(ckpt["val_iou_at_threshold"], 4),
                       "epochs_run": len(last["history"]), "train_loop_seconds": last["history"][-1]["seconds"]}
    print("test pairs (extra/*):", flush=True)
    report["extra"] = evaluate_pairs(default / "best.pt", pairs)
    ious = [r["iou"] for r in report["extra"].values()]
    report["min_extra_iou"] = min(ious)
    report["target_iou_0.60_met_on_every_pair"] = bool(min(ious) >= 0.60)
    if not args.skip_predict_cost:
        report["predict"] = predict_cost(default / "best.pt", train_dir / "rgb.png")
    report["seams"] = seam_check(default / "best.pt", train_dir / "rgb.png")
    for seed in args.default_seeds or []:  # the default run's seed spread
        run = runs / f"default_seed{seed}"
        start = load_avg()
        sec = train_run(train_dir, run, ["--seed", str(seed)], args.threads, args.device)
        st = read_checkpoint(run / "best.pt")
        model, _ = load_checkpoint(run / "best.pt", torch.device("cpu"))
        row = {"train_seconds": sec, "load_avg": {"start": start, "end": load_avg()}, "best_epoch": st["best_epoch"],
               "val_iou_at_0.5": st["history"][st["best_epoch"] - 1]["val_iou"], "pairs": {}}
        for d in pairs:
            image = read_rgb(d / "rgb.png")
            gt = read_gt(d / "gt.png", image.shape[:2], d / "rgb.png").astype(bool)
            row["pairs"][d.name] = round(iou(predict_probs(model, image) >= 0.5, gt), 4)
        print(f"  default, seed {seed}: {row}", flush=True)
        report.setdefault("default_seeds", {})[str(seed)] = row
        write_json(out, report)

    strip = validation_strip(train_dir)
    if args.oracle is not None:
        extra = args.oracle_args.split()
        key = "oracle" if not extra else "oracle_" + "_".join(a.lstrip("-") for a in extra)
        command = shown_train("<data>/extra/<pair>", oracle_args(args.seed, extra))
        oracle = kept_rows(report, key, command)
        for d in pairs:
            if args.oracle and d.name not in args.oracle:
                continue
            run = runs / (key + "_" + d.name)
            sec = train_run(d, run, oracle_args(args.seed, extra), args.threads, args.device)
            oracle[d.name] = {"train_seconds": sec, "load_avg": load_avg(),
                              **score_run(run, [d], validation_strip(d)), "fit": fit_check(run, d)}
            report[key] = {"command": command,
                           "what": "the default network trained on the test pair itself (its own strip held "
                                   "out and picking the epoch): pairs = the whole test image (mostly seen in "
                                   "training: the fit this 14-px receptive field allows there), val_strip = "
                                   "the pair's own held-out strip", "runs": oracle}
            write_json(out, report)
    if args.ablate is not None:
        command = shown_train("<data>/train_substitute", [*ABLATION_BUDGET, "<flags>"])
        abl = {k: v for k, v in kept_rows(report, "ablations", command).items()
               if variant_of(k) in ABLATIONS and "pairs" in v}
        for name, seed in ((a, s) for a in ABLATIONS for s in args.ablate_seeds):
            if args.ablate and name not in args.ablate:
                continue
            flags, row = ablation_flags(name, seed)
            sec = train_run(train_dir, runs / row, ABLATION_BUDGET + flags, args.threads, args.device)
            abl[row] = {"flags": " ".join(flags), "train_seconds": sec, "load_avg": load_avg(),
                        **score_run(runs / row, pairs, strip)}
            report["ablations"] = {
                "command": command, "runs": abl,
                "note": "seed 0 unless the row's name ends in _seed<S>; the seed rows give the spread to read "
                        "differences against"}
            write_json(out, report)
    report["load_avg_at_end"] = load_avg()
    write_json(out, report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
