"""Confidence intervals for detection mAP: a paired bootstrap over images.

The method
----------
mAP is not a mean over images, so its noise cannot be read off a per-image standard
deviation. The bootstrap estimates it by resampling: draw N images with replacement from the
N evaluated ones, recompute mAP on that sample, repeat B times (default 1000); the 2.5th and
97.5th percentiles of the B values bound a 95% interval (percentile bootstrap). Comparing two
codecs (or a codec and an anchor), each resample draws the SAME images for both and takes the
difference, so what the two have in common (hard images, easy images) cancels: a *paired*
bootstrap. Resamples where the statistic is undefined (NaN) are dropped and counted.

Resampling without re-running the matcher: VOC matching (icm/voc_eval.py) is greedy per
image in score order, so whether a detection is a true positive, a false positive or ignored
depends on its own image only; the same holds for COCO matching (pycocotools, per image and
category, maxDets 100). :func:`image_matches` records, once, per detection its image, class,
score and these flags (VOC at IoU 0.5; COCO at the 10 IoUs .50:.05:.95) and per image the
ground-truth count per class. A resample is then a vector of counts w[i] (how many times
image i is drawn): each detection enters the ranked list w[i] times, each positive w[i]
times (the copies of a detection sit next to each other in the ranking; only where scores
tie exactly does this choose an order, as any tie-break does). :func:`map_from_matches` computes the mAP of B resamples at once: per class the
detections are sorted by score once; the precision/recall curve only needs the cumulative
(weighted) true- and false-positive counts at the true positives (a count matrix product for
the false positives), and AP follows by the protocol's interpolation: VOC07 11-point, VOC12
all-point, COCO 101-point averaged over the 10 IoUs. On the full sample (every w[i] = 1) the
numbers equal :func:`icm.voc_eval.voc_map` and ``icm.evaluation.coco_eval.coco_map`` (ties
across images are broken by image order, as both do when image ids follow the sample order).

    records = image_matches(ground_truth, detections, num_classes)   # once per evaluation
    records.save("point.matches.npz")
    paired_difference(anchor_records, test_records, "voc07")          # Interval of the mAP gain
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np

from icm.io import atomic_path
from icm.voc_eval import as_arrays, voc_matches

PROTOCOLS = ("voc07", "voc12", "coco", "coco50", "coco75")
MASK_RECORDS = "mask:"  # PointSamples.matches key prefix of a detector's instance-mask records
COCO_IOUS = np.linspace(0.5, 0.95, 10)  # pycocotools' iouThrs
COCO_RECALLS = np.linspace(0.0, 1.0, 101)  # pycocotools' recThrs
VOC07_RECALLS = np.linspace(0.0, 1.0, 11)
COCO_MAX_DETS = 100
_ALL_IOUS = (1 << len(COCO_IOUS)) - 1
_COCO_BITS = {"coco": list(range(10)), "coco50": [0], "coco75": [5]}


@dataclass
class MatchRecords:
    """What AP needs of one detector's predictions on N images, and nothing more.

    Per detection (D, in image order, then the detector's order within the image):
    ``image`` index, ``label`` (class), ``score``, ``voc`` flag at IoU 0.5 (1 true positive,
    0 false positive, -1 ignored: matched a difficult box), COCO bitmasks over
    :data:`COCO_IOUS` (``coco_tp``: matched a non-ignored box; ``coco_ignore``: matched a
    crowd box, or beyond the 100 best of its image and class). Per image and class:
    ``voc_gt`` (non-difficult boxes) and ``coco_gt`` (non-crowd boxes). ``image_ids`` name
    the images (for checking that two records cover the same ones); ``coco`` says whether
    the COCO fields were computed.
    """

    image: np.ndarray
    label: np.ndarray
    score: np.ndarray
    voc: np.ndarray
    coco_tp: np.ndarray
    coco_ignore: np.ndarray
    voc_gt: np.ndarray
    coco_gt: np.ndarray
    image_ids: np.ndarray
    coco: bool = True

    @property
    def num_images(self) -> int:
        return int(self.voc_gt.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.voc_gt.shape[1])

    def subset(self, indices: Sequence[int] | np.ndarray) -> MatchRecords:
        """The records of images ``indices`` (in that order; repeats allowed)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        starts = np.searchsorted(self.image, np.arange(self.num_images + 1))
        take = [np.arange(starts[i], starts[i + 1]) for i in indices]
        det = np.concatenate(take) if take else np.zeros(0, np.int64)
        new_image = np.repeat(np.arange(len(indices)), [len(t) for t in take]).astype(np.int32)
        coco_det, coco_images = (det, indices) if self.coco else (slice(0), slice(0))
        return MatchRecords(new_image, self.label[det], self.score[det], self.voc[det],
                            self.coco_tp[coco_det], self.coco_ignore[coco_det], self.voc_gt[indices],
                            self.coco_gt[coco_images], self.image_ids[indices], self.coco)

    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The fields as named arrays (``prefix`` + field name)."""
        return {prefix + f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str = "") -> MatchRecords:
        """Inverse of :meth:`to_arrays`."""
        values = {f.name: arrays[prefix + f.name] for f in fields(cls)}
        values["coco"] = bool(values["coco"])
        records = cls(**values)
        if np.any(np.diff(records.image) < 0) or len(records.image_ids) != records.num_images:
            raise ValueError("match records: detections not in image order, or image ids missing")
        return records

    def save(self, path: str | os.PathLike) -> None:
        """Write a compressed ``.npz`` atomically."""
        save_arrays(path, self.to_arrays())

    @classmethod
    def load(cls, path: str | os.PathLike) -> MatchRecords:
        """Read a file written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            return cls.from_arrays(data)


def save_arrays(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez_compressed`` to ``path`` atomically (no pickled objects)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
        f.flush()
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------- matching


def image_matches(ground_truth: Sequence[dict], detections: Sequence[dict], num_classes: int,
                  coco: bool = True, image_ids: Sequence[str] | None = None) -> MatchRecords:
    """Match records from per-image ground truth and detections (the inputs of
    :func:`icm.voc_eval.voc_map`). ``difficult`` boxes are ignored under VOC and crowd
    regions under COCO (as ``icm/evaluation/engine.py`` passes difficult, crowd and group-of
    boxes to both). ``coco=False`` skips the COCO flags (pycocotools is the slow part)."""
    n = len(ground_truth)
    voc = voc_matches(ground_truth, detections, num_classes)
    image, label, score = voc["image"].astype(np.int32), voc["label"].astype(np.int32), voc["score"]
    if coco:
        coco_tp, coco_ignore, coco_gt = _coco_flags(ground_truth, image, label, score, voc["boxes"], num_classes)
    else:
        coco_tp = coco_ignore = np.zeros(0, dtype=np.uint16)
        coco_gt = np.zeros((0, num_classes), dtype=np.int32)
    ids = np.asarray([str(i) for i in (range(n) if image_ids is None else image_ids)], dtype=str)
    if len(ids) != n:
        raise ValueError(f"{len(ids)} image ids for {n} images")
    return MatchRecords(image, label, score, voc["flag"], coco_tp, coco_ignore, voc["positives"].astype(np.int32),
                        coco_gt, ids, coco)


def _coco_flags(ground_truth: Sequence[dict], image: np.ndarray, label: np.ndarray, score: np.ndarray,
                boxes: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COCO match/ignore bitmasks per detection and non-ignored ground truth per image and
    class, read from pycocotools' box ``evalImgs`` (area "all", maxDets 100)."""
    gts = [as_arrays(g, ("boxes", "labels", "difficult")) for g in ground_truth]
    n = len(gts)

    def xywh(b: np.ndarray) -> list[float]:
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    annotations = []
    for i, g in enumerate(gts):
        for box, lab, crowd in zip(g["boxes"], g["labels"], g["difficult"]):
            if 0 <= lab < num_classes:
                bbox = xywh(box)
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(lab) + 1,
                                    "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": int(crowd)})
    results = []
    for d in range(len(label)):  # what COCO.loadRes makes of a results list, ids = index + 1
        bbox = xywh(boxes[d])
        results.append({"id": d + 1, "image_id": int(image[d]) + 1, "category_id": int(label[d]) + 1,
                        "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0, "score": float(score[d])})
    dataset = {"images": [{"id": i + 1} for i in range(n)], "categories": [{"id": c + 1} for c in range(num_classes)]}
    return _evaluated_flags({**dataset, "annotations": annotations}, {**dataset, "annotations": results}, "bbox",
                            len(label), list(range(1, n + 1)), list(range(1, num_classes + 1)))


def _evaluated_flags(ground_truth: dict, results: dict, iou_type: str, num_detections: int,
                     image_ids: Sequence[int], category_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run pycocotools' per-image matching (area "all", maxDets 100) of ``results`` (COCO
    dicts, detection ids 1..D in record order) against ``ground_truth`` and read its
    ``evalImgs`` into the COCO fields of :class:`MatchRecords`: per detection the match and
    ignore bitmasks over :data:`COCO_IOUS`, per image and class the non-ignored ground truth
    (images and classes in the order of ``image_ids`` and ``category_ids``)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def index(data: dict) -> COCO:
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
        return coco

    image_index = {int(i): k for k, i in enumerate(image_ids)}
    class_index = {int(c): k for k, c in enumerate(category_ids)}
    coco_tp = np.zeros(num_detections, dtype=np.uint16)
    coco_ignore = np.full(num_detections, _ALL_IOUS, dtype=np.uint16)  # beyond maxDets unless seen
    coco_gt = np.zeros((len(image_ids), len(category_ids)), dtype=np.int32)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(index(ground_truth), index(results), iou_type)
        evaluator.params.imgIds = [int(i) for i in image_ids]
        evaluator.params.areaRng, evaluator.params.areaRngLbl = [[0, 1e5**2]], ["all"]
        evaluator.params.maxDets = [COCO_MAX_DETS]
        evaluator.evaluate()
    bits = (1 << np.arange(len(COCO_IOUS), dtype=np.uint16))[:, None]
    for e in evaluator.evalImgs:
        if e is None:
            continue
        coco_gt[image_index[e["image_id"]], class_index[e["category_id"]]] = int(
            np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
        if not e["dtIds"]:
            continue
        d = np.asarray(e["dtIds"], dtype=np.int64) - 1
        ignore = np.asarray(e["dtIgnore"], dtype=bool)
        matched = (np.asarray(e["dtMatches"]) > 0) & ~ignore
        coco_tp[d] = (matched * bits).sum(0)
        coco_ignore[d] = (ignore * bits).sum(0)
    return coco_tp, coco_ignore, coco_gt


def mask_matches(mask_ground_truth: dict, detections: Sequence[dict], image_ids: Sequence[int],
                 category_ids: Sequence[int], sample_ids: Sequence[str]) -> MatchRecords:
    """Match records of instance masks under COCO's segm protocol (mask IoU, pycocotools).

    ``mask_ground_truth``: a COCO instances dict with segmentations, numbered by the
    evaluation's ``image_ids`` (one per sample, in order, named ``sample_ids``);
    ``detections``: a COCO results list with ``segmentation`` in image order, then each
    image's detector order (:func:`icm.evaluation.coco_eval.coco_detections` with masks);
    ``category_ids``: the COCO id of each class index. Only the COCO fields mean anything
    for masks (``coco``, ``coco50``, ``coco75``); the VOC fields mirror COCO's matching at
    IoU 0.5 so the records stay well formed. On the full sample they give
    ``coco_map(mask_ground_truth, detections, "segm")``.
    """
    from pycocotools import mask as mask_utils

    image_index = {int(i): k for k, i in enumerate(image_ids)}
    class_index = {int(c): k for k, c in enumerate(category_ids)}
    image = np.asarray([image_index[int(d["image_id"])] for d in detections], dtype=np.int32)
    if np.any(np.diff(image) < 0):
        raise ValueError("mask detections are not in image order")
    label = np.asarray([class_index[int(d["category_id"])] for d in detections], dtype=np.int32)
    score = np.asarray([float(d["score"]) for d in detections], dtype=np.float64)
    # the area COCO.loadRes gives a result (its box's when it has one: a box of negative width
    # makes an unmatched detection ignored, as in coco_map)
    results = [{**d, "id": k + 1, "iscrowd": 0,
                "area": float(d["bbox"][2] * d["bbox"][3]) if d.get("bbox") else float(mask_utils.area(d["segmentation"]))}
               for k, d in enumerate(detections)]
    # pycocotools turns polygons into RLEs in place: hand it copies
    truth = {**mask_ground_truth, "annotations": [dict(a) for a in mask_ground_truth["annotations"]]}
    coco_tp, coco_ignore, coco_gt = _evaluated_flags(
        truth, {"images": truth["images"], "categories": truth["categories"], "annotations": results},
        "segm", len(results), image_ids, category_ids)
    voc = np.where(coco_tp & 1, 1, np.where(coco_ignore & 1, -1, 0)).astype(np.int8)
    return MatchRecords(image, label, score, voc, coco_tp, coco_ignore, coco_gt.copy(), coco_gt,
                        np.asarray([str(i) for i in sample_ids], dtype=str), True)


# ----------------------------------------------------------------------------- mAP


def map_from_matches(records: MatchRecords, protocol: str,
                     weights: np.ndarray | None = None) -> np.ndarray | float:
    """mAP of ``records`` under ``protocol`` (``voc07``, ``voc12``, ``coco`` = AP@[.5:.95],
    ``coco50``, ``coco75``): the mean AP over classes with positives, NaN if none.

    ``weights`` [B, N]: how many times (an integer) each image is drawn in each of B
    resamples; the result is then [B] mAP values. None: the full sample once, a float.
    """
    return maps_from_matches(records, (protocol,), weights)[protocol]


def maps_from_matches(records: MatchRecords, protocols: Sequence[str],
                      weights: np.ndarray | None = None) -> dict[str, np.ndarray | float]:
    """:func:`map_from_matches` of several protocols at once (the COCO ones share work)."""
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocol(s) {unknown}; expected {', '.join(PROTOCOLS)}")
    if not records.coco and any(p.startswith("coco") for p in protocols):
        raise ValueError("these match records have no COCO flags (made with coco=False)")
    w = np.ones((1, records.num_images)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != records.num_images:
        raise ValueError(f"weights of shape {w.shape}: expected [B, {records.num_images}]")
    if np.any(w < 0) or np.any(w != np.round(w)):
        raise ValueError("weights must be non-negative integer counts (times each image is drawn)")
    out: dict[str, np.ndarray | float] = {}
    if "voc07" in protocols or "voc12" in protocols:
        wanted = [p for p in ("voc07", "voc12") if p in protocols]
        aps = _class_aps(records, (records.voc == 1)[None], (records.voc == 0)[None], records.voc_gt, w, wanted)
        out.update({p: _mean_over_classes(aps[p][:, :, 0], w @ records.voc_gt) for p in wanted})
    coco = [p for p in protocols if p.startswith("coco")]
    if coco:
        ious = sorted({b for p in coco for b in _COCO_BITS[p]})
        bits = (1 << np.asarray(ious, dtype=np.uint16))[:, None]
        tp = (records.coco_tp & bits) != 0
        fp = ~tp & ((records.coco_ignore & bits) == 0)
        aps = _class_aps(records, tp, fp, records.coco_gt, w, ["coco"])["coco"]  # [B, K, T]
        positives = w @ records.coco_gt
        for p in coco:
            cols = [ious.index(b) for b in _COCO_BITS[p]]
            out[p] = _mean_over_classes(aps[:, :, cols].mean(2), positives)
    if weights is None:
        return {p: float(v[0]) for p, v in out.items()}
    return out


def _mean_over_classes(ap: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Mean of ``ap`` [B, K] over the classes with positives in each resample (NaN: none)."""
    valid = positives > 0
    count = valid.sum(1)
    total = np.where(valid, ap, 0.0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _class_aps(records: MatchRecords, tp: np.ndarray, fp: np.ndarray, gt: np.ndarray,
               w: np.ndarray, kinds: Sequence[str]) -> dict[str, np.ndarray]:
    """AP [B, K, T] per interpolation in ``kinds`` (``voc07``, ``voc12``, ``coco``) from
    per-detection true/false-positive masks ``tp``/``fp`` [T, D] (neither: ignored)."""
    num_b, n = w.shape
    counts = w.astype(np.int32)
    product = _CountProduct(counts)
    positives = counts @ gt  # [B, K]
    out = {kind: np.zeros((num_b, records.num_classes, tp.shape[0])) for kind in kinds}
    # One stable sort: by class, then decreasing score; ties keep image order (as the VOC
    # code and pycocotools' mergesort do).
    order = np.lexsort((-records.score, records.label))
    bounds = np.searchsorted(records.label[order], np.arange(records.num_classes + 1))
    for c in range(records.num_classes):
        ranked = order[bounds[c] : bounds[c + 1]]
        curve = _Curve(positives[:, c])
        for t in range(tp.shape[0]):
            is_tp, is_fp = tp[t, ranked], fp[t, ranked]
            num_tp = int(is_tp.sum())
            if num_tp == 0:
                continue  # no true positive: AP 0
            fp_rank = np.nonzero(is_fp)[0]
            segment = np.cumsum(is_tp)[fp_rank]  # true positives ranked before each FP
            keep = segment < num_tp  # FPs after the last TP change no AP
            segment, fp_image = segment[keep], records.image[ranked[fp_rank[keep]]]
            # Runs of true positives with no false positive between them: along a run the
            # precision rises, so its envelope is the one at the run's end, and only the
            # run ends need a point of the curve.
            starts = np.unique(np.concatenate([[0], segment]))
            tp_image = records.image[ranked[is_tp]]
            tp_cum = np.cumsum(np.add.reduceat(counts[:, tp_image], starts, axis=1), axis=1)
            fp_counts = np.bincount(fp_image * len(starts) + np.searchsorted(starts, segment),
                                    minlength=n * len(starts)).reshape(n, len(starts))
            fp_cum = product(np.cumsum(fp_counts, axis=1))  # false positives before each run
            for kind in kinds:
                out[kind][:, c, t] = curve.average_precision(tp_cum, fp_cum, kind)
    return out


class _CountProduct:
    """``counts @ matrix`` for non-negative integer matrices as float64, exact: in float32
    (twice as fast) while every sum stays below 2**24."""

    def __init__(self, counts: np.ndarray):
        self.counts = counts.astype(np.float64)
        self.counts32 = counts.astype(np.float32)
        self.row_sum = int(counts.sum(1).max(initial=0))

    def __call__(self, matrix: np.ndarray) -> np.ndarray:
        if self.row_sum * int(matrix.max(initial=0)) < 2**24:
            return (self.counts32 @ matrix.astype(np.float32)).astype(np.float64)
        return self.counts @ matrix.astype(np.float64)


class _Curve:
    """AP of one class in B resamples with ``positives`` [B] positives each, from the
    cumulative true/false-positive counts [B, P] at the ends of the runs of true positives
    (in rank order). Recall only changes at true positives and the precision envelope there
    equals the full curve's, so the ranked list in between is not needed."""

    def __init__(self, positives: np.ndarray):
        self.positives = positives
        self.denominator = np.maximum(positives, 1).astype(np.float64)[:, None]
        self.tables: dict[str, np.ndarray] = {}
        self.offsets = (np.arange(len(positives)) * (int(positives.max(initial=0)) + 1))[:, None]

    def reached(self, kind: str, tp: np.ndarray) -> np.ndarray:
        """How many recall thresholds ``tp`` / positives reaches ([B, P], float): looked up
        in a per-class table of every integer count (recall compared as the float it is)."""
        if kind not in self.tables:
            thresholds = COCO_RECALLS if kind == "coco" else VOC07_RECALLS
            recall = np.arange(self.positives.max(initial=0) + 1) / self.denominator
            self.tables[kind] = np.searchsorted(thresholds, recall, side="right").astype(np.float64)
        return self.tables[kind].ravel()[tp + self.offsets]

    def average_precision(self, tp: np.ndarray, fp: np.ndarray, kind: str) -> np.ndarray:
        """AP [B] (NaN where a resample has no positive)."""
        tpf = tp.astype(np.float64)
        if kind == "coco":
            precision = tpf / (fp + tpf + np.spacing(1))  # pycocotools' formula
        else:
            precision = tpf / np.maximum(tpf + fp, np.finfo(np.float64).eps)
        envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        if kind == "voc12":  # area under the envelope, summed where recall changes
            steps = _steps(tpf / self.denominator)
            ap = np.einsum("ij,ij->i", steps, envelope)
        else:  # each recall threshold takes the envelope at the first point reaching it
            steps = _steps(self.reached(kind, tp))
            ap = np.einsum("ij,ij->i", steps, envelope) / (len(COCO_RECALLS) if kind == "coco" else len(VOC07_RECALLS))
        return np.where(self.positives > 0, ap, np.nan)


def _steps(values: np.ndarray) -> np.ndarray:
    """Increments along axis 1, the first from 0."""
    out = np.empty_like(values)
    out[:, 0] = values[:, 0]
    np.subtract(values[:, 1:], values[:, :-1], out=out[:, 1:])
    return out


# ----------------------------------------------------------------------------- intervals


@dataclass
class Interval:
    """A bootstrap interval: ``estimate`` on the full sample, ``low``/``high`` bounds (NaN
    when no resample gave a value), ``resamples`` used and ``dropped`` (NaN statistic)."""

    estimate: float
    low: float
    high: float
    resamples: int
    dropped: int

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely on one side of 0."""
        return bool(self.low > 0 or self.high < 0)


def bootstrap_weights(num_images: int, resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """[B, N] multinomial counts: how many times each image is drawn in each resample."""
    if num_images < 1 or resamples < 1:
        raise ValueError(f"bootstrap needs images and resamples (got {num_images}, {resamples})")
    rng = np.random.default_rng(seed)
    return rng.multinomial(num_images, np.full(num_images, 1.0 / num_images), size=resamples)


def percentile_interval(values: np.ndarray, estimate: float, confidence: float = 0.95) -> Interval:
    """Percentile interval of bootstrap ``values`` (NaN values dropped and counted)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    ok = values[np.isfinite(values)]
    if not 0 < confidence < 1:
        raise ValueError(f"confidence {confidence}: expected a fraction in (0, 1)")
    if ok.size:
        tail = 100 * (1 - confidence) / 2
        low, high = (float(v) for v in np.percentile(ok, [tail, 100 - tail]))
    else:
        low = high = math.nan
    return Interval(float(estimate), low, high, int(ok.size), int(values.size - ok.size))


def paired_difference(a: MatchRecords, b: MatchRecords, protocol: str, resamples: int = 1000,
                      seed: int = 0, confidence: float = 0.95) -> Interval:
    """Interval of mAP(b) - mAP(a), both evaluated on the same resampled images each time.
    ``a`` and ``b`` must cover the same images in the same order (same ids, same ground
    truth)."""
    same = (a.num_images == b.num_images and a.num_classes == b.num_classes
            and np.array_equal(a.image_ids, b.image_ids) and np.array_equal(a.voc_gt, b.voc_gt)
            and (not (a.coco and b.coco) or np.array_equal(a.coco_gt, b.coco_gt)))
    if not same:
        raise ValueError("paired_difference: the two match records cover different images "
                         f"({a.num_images} and {b.num_images} images, or other ids / ground truth)")
    w = bootstrap_weights(a.num_images, resamples, seed)
    diff = map_from_matches(b, protocol, w) - map_from_matches(a, protocol, w)
    estimate = map_from_matches(b, protocol) - map_from_matches(a, protocol)
    return percentile_interval(diff, estimate, confidence)


# ----------------------------------------------------------------------------- per-point file


@dataclass
class PointSamples:
    """Everything a bootstrap over images needs of one evaluated (codec, quality) point:
    ``image_ids`` [N], ``per_image`` metrics ({name: [N] floats, NaN = not measured}, e.g.
    bpp and PSNR) and ``matches`` ({detector: :class:`MatchRecords`}; a mask model's mask
    records under :data:`MASK_RECORDS` + its name, see :func:`mask_matches`). No boxes."""

    image_ids: np.ndarray
    per_image: dict[str, np.ndarray]
    matches: dict[str, MatchRecords]

    def save(self, path: str | os.PathLike) -> None:
        """Write one compressed ``.npz`` atomically."""
        arrays = {"image_ids": np.asarray(self.image_ids, dtype=str),
                  "detectors": np.asarray(list(self.matches), dtype=str)}
        arrays.update({f"metric.{k}": np.asarray(v, dtype=np.float64) for k, v in self.per_image.items()})
        for i, records in enumerate(self.matches.values()):
            arrays.update(records.to_arrays(f"det{i}."))
        save_arrays(path, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PointSamples:
        """Read a file written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            per_image = {k[len("metric."):]: data[k] for k in data.files if k.startswith("metric.")}
            matches = {str(name): MatchRecords.from_arrays(data, f"det{i}.")
                       for i, name in enumerate(data["detectors"])}
            return cls(data["image_ids"], per_image, matches)
