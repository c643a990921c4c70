"""Paired bootstrap over images for mAP: hand-computed resamples, equality with the direct
VOC / COCO code on the full sample and on materialised resamples, the records file."""

import numpy as np
import pytest

from icm.ap_bootstrap import (
    MatchRecords,
    PointSamples,
    bootstrap_weights,
    image_matches,
    map_from_matches,
    maps_from_matches,
    mask_matches,
    paired_difference,
    percentile_interval,
)
from icm.data.records import DetectionSample
from icm.evaluation.coco_eval import coco_detections, coco_ground_truth, coco_map, masks_to_rle
from icm.voc_eval import voc_map

# Two images of one class, one object each. Codec A: image 0 has a TP (0.9) and an FP (0.8);
# image 1 an FP (0.95) ranked above its TP (0.7). Codec B finds image 1's object first.
GT = [{"boxes": [[0, 0, 10, 10]], "labels": [0]}, {"boxes": [[20, 20, 40, 40]], "labels": [0]}]
FP_BOX = [60, 60, 70, 70]
DETS_A = [{"boxes": [[0, 0, 10, 10], FP_BOX], "scores": [0.9, 0.8], "labels": [0, 0]},
          {"boxes": [FP_BOX, [20, 20, 40, 40]], "scores": [0.95, 0.7], "labels": [0, 0]}]
DETS_B = [DETS_A[0], {"boxes": [[20, 20, 40, 40]], "scores": [0.97], "labels": [0]}]
# A, ranked over both images: FP, TP, FP, TP -> recall .5 @ precision .5, recall 1 @ .5: AP .5
#   image 0 drawn twice: TP TP FP FP -> AP 1; image 1 twice: FP FP TP TP -> recall 1 @ .5: AP .5
# B: TP(1) TP(0) FP(0) in every resample -> AP 1
DRAWS = np.array([[2, 0], [1, 1], [0, 2]])
A_BY_DRAW, B_BY_DRAW = [1.0, 0.5, 0.5], [1.0, 1.0, 1.0]


def test_every_resample_of_two_images_by_hand():
    a, b = image_matches(GT, DETS_A, 1), image_matches(GT, DETS_B, 1)
    assert a.voc.tolist() == [1, 0, 0, 1] and a.voc_gt.tolist() == [[1], [1]]
    for protocol in ("voc07", "voc12", "coco", "coco50", "coco75"):
        assert map_from_matches(a, protocol, DRAWS) == pytest.approx(A_BY_DRAW, abs=1e-12), protocol
        assert map_from_matches(b, protocol, DRAWS) == pytest.approx(B_BY_DRAW, abs=1e-12), protocol
        assert map_from_matches(a, protocol) == pytest.approx(0.5, abs=1e-12)


def test_paired_interval_of_two_images_by_hand():
    a, b = image_matches(GT, DETS_A, 1), image_matches(GT, DETS_B, 1)
    weights = bootstrap_weights(2, 1000, seed=3)
    only_image_0 = weights[:, 0] == 2
    assert 0.2 < only_image_0.mean() < 0.3  # P(both draws hit image 0) = 1/4
    interval = paired_difference(a, b, "voc12", resamples=1000, seed=3)
    # the difference is 0 when only image 0 is drawn (~25%), else 0.5
    assert (interval.estimate, interval.low, interval.high) == (0.5, 0.0, 0.5)
    assert (interval.resamples, interval.dropped) == (1000, 0)
    assert interval.excludes_zero is False
    narrower = paired_difference(a, b, "voc12", resamples=1000, seed=3, confidence=0.4)
    assert (narrower.low, narrower.high) == (0.5, 0.5) and narrower.excludes_zero


def test_resamples_without_positives_are_dropped_and_counted():
    gt = [{"boxes": np.zeros((0, 4)), "labels": []}, GT[1]]  # only image 1 has an object
    records = image_matches(gt, DETS_A, 1)
    weights = bootstrap_weights(2, 500, seed=1)
    maps = map_from_matches(records, "voc07", weights)
    assert np.array_equal(np.isnan(maps), weights[:, 1] == 0)
    interval = paired_difference(records, records, "coco", resamples=500, seed=1)
    assert interval.dropped == int((weights[:, 1] == 0).sum()) > 0
    assert interval.resamples == 500 - interval.dropped and interval.low == interval.high == 0.0
    plain = percentile_interval(np.array([np.nan, 1.0, 2.0, 3.0, np.nan, 4.0]), 2.5, confidence=0.5)
    assert (plain.low, plain.high, plain.resamples, plain.dropped) == (1.75, 3.25, 4, 2)


def random_detection_data(seed, n=30, k=4, ties=True):
    """Several classes, difficult/crowd boxes, images without objects, duplicate and
    misclassified detections, random false positives, tied scores."""
    rng = np.random.default_rng(seed)
    gts, dets, samples = [], [], []
    for i in range(n):
        m = int(rng.integers(0, 5)) if i % 6 else 0
        xy, wh = rng.uniform(0, 80, (m, 2)), rng.uniform(6, 40, (m, 2))
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        labels, difficult = rng.integers(0, k, m), rng.random(m) < 0.2
        gts.append({"boxes": boxes, "labels": labels, "difficult": difficult})
        samples.append(DetectionSample(str(i), f"im{i}.png", 128, 128, boxes, labels, iscrowd=difficult))
        found, classes = [], []
        for box, label in zip(boxes, labels):
            for _ in range(int(rng.integers(0, 3))):  # 0, 1 or 2 (a duplicate) detections
                found.append(box + rng.normal(0, 3, 4))
                classes.append(label if rng.random() < 0.9 else rng.integers(0, k))
        for _ in range(int(rng.integers(0, 5))):
            xy, wh = rng.uniform(0, 80, 2), rng.uniform(6, 40, 2)
            found.append(np.concatenate([xy, xy + wh]))
            classes.append(rng.integers(0, k))
        scores = rng.random(len(found))
        dets.append({"boxes": np.asarray(found, np.float32).reshape(-1, 4),
                     "scores": (np.round(scores, 1) if ties else scores).astype(np.float32),
                     "labels": np.asarray(classes, np.int64)})
    return gts, dets, samples


def direct_maps(gts, dets, samples, k):
    coco = coco_map(coco_ground_truth(samples, [str(c) for c in range(k)]), coco_detections(dets, range(1, k + 1)))
    return {"voc07": voc_map(gts, dets, k, use_07_metric=True).map, "voc12": voc_map(gts, dets, k).map,
            "coco": coco["map"], "coco50": coco["ap50"], "coco75": coco["ap75"]}


@pytest.mark.parametrize("seed", range(4))
def test_full_sample_equals_voc_map_and_coco_map(seed):
    gts, dets, samples = random_detection_data(seed)
    records = image_matches(gts, dets, 4)
    expected = direct_maps(gts, dets, samples, 4)
    assert 0.05 < expected["voc07"] < 0.95 and 0.05 < expected["coco"] < 0.95  # not a trivial case
    got = maps_from_matches(records, list(expected))
    for protocol, value in expected.items():
        assert got[protocol] == pytest.approx(value, abs=1e-9 if protocol.startswith("voc") else 1e-6), protocol


@pytest.mark.parametrize("seed", range(3))
def test_a_resample_equals_the_direct_map_of_the_drawn_images(seed):
    gts, dets, samples = random_detection_data(seed, ties=False)  # tie order is a convention
    records = image_matches(gts, dets, 4)
    weights = bootstrap_weights(len(gts), 3, seed=seed)
    got = maps_from_matches(records, ["voc07", "voc12", "coco", "coco50", "coco75"], weights)
    for b, row in enumerate(weights):
        drawn = np.repeat(np.arange(len(gts)), row)
        expected = direct_maps([gts[i] for i in drawn], [dets[i] for i in drawn], [samples[i] for i in drawn], 4)
        for protocol, value in expected.items():
            assert got[protocol][b] == pytest.approx(value, abs=1e-9), (b, protocol)
        subset = records.subset(drawn)
        assert map_from_matches(subset, "coco") == pytest.approx(expected["coco"], abs=1e-9)


def test_records_and_point_samples_round_trip(tmp_path):
    gts, dets, _ = random_detection_data(0, n=12)
    records = image_matches(gts, dets, 4, image_ids=[f"img{i}" for i in range(12)])
    records.save(tmp_path / "r.matches.npz")
    loaded = MatchRecords.load(tmp_path / "r.matches.npz")
    for name, value in records.to_arrays().items():
        assert np.array_equal(getattr(loaded, name), value), name
    assert loaded.image_ids[3] == "img3" and loaded.coco is True
    samples = PointSamples(records.image_ids, {"bpp": np.linspace(0.1, 1, 12), "psnr-rgb": np.full(12, 30.0)},
                           {"yolo": records, "frcnn": image_matches(gts, dets, 4, coco=False)})
    samples.save(tmp_path / "p.matches.npz")
    back = PointSamples.load(tmp_path / "p.matches.npz")
    assert list(back.matches) == ["yolo", "frcnn"] and back.matches["frcnn"].coco is False
    assert np.array_equal(back.per_image["bpp"], samples.per_image["bpp"])
    assert map_from_matches(back.matches["yolo"], "coco") == map_from_matches(records, "coco")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.matches.npz", "r.matches.npz"]  # no temp files
    with pytest.raises(ValueError, match="no COCO flags"):
        map_from_matches(back.matches["frcnn"], "coco")


def test_subset_reorders_images_like_matching_them_again():
    gts, dets, _ = random_detection_data(1, n=10)
    records = image_matches(gts, dets, 4)
    order = [7, 2, 2, 0]
    again = image_matches([gts[i] for i in order], [dets[i] for i in order], 4,
                          image_ids=[str(i) for i in order])
    subset = records.subset(order)
    for name, value in again.to_arrays().items():
        assert np.array_equal(getattr(subset, name), value), name
    voc_only = image_matches(gts, dets, 4, coco=False).subset(order)
    assert np.array_equal(voc_only.voc, again.voc) and voc_only.coco_gt.shape == (0, 4)


def test_weights_and_mismatched_records_are_errors():
    a = image_matches(GT, DETS_A, 1)
    weights = bootstrap_weights(2, 50, seed=0)
    assert weights.shape == (50, 2) and (weights.sum(1) == 2).all()
    assert np.array_equal(weights, bootstrap_weights(2, 50, seed=0))
    assert not np.array_equal(bootstrap_weights(30, 5, seed=0), bootstrap_weights(30, 5, seed=1))
    with pytest.raises(ValueError, match="expected \\[B, 2\\]"):
        map_from_matches(a, "voc07", np.ones((3, 5)))
    with pytest.raises(ValueError, match="integer counts"):
        map_from_matches(a, "voc07", np.full((1, 2), 0.5))
    with pytest.raises(ValueError, match="unknown protocol"):
        map_from_matches(a, "voc10")
    with pytest.raises(ValueError, match="different images"):
        paired_difference(a, a.subset([1, 0]), "voc07")
    with pytest.raises(ValueError, match="different images"):
        paired_difference(a, image_matches(GT + GT[:1], DETS_A + DETS_A[:1], 1), "voc07")


def ellipse_mask(box, size=128):
    """The ellipse inscribed in ``box``: mask IoUs differ from box IoUs."""
    yy, xx = np.mgrid[:size, :size] + 0.5
    x1, y1, x2, y2 = box
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, max((x2 - x1) / 2, 1), max((y2 - y1) / 2, 1)
    return (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1).astype(np.uint8)


def mask_data(gts, dets, order):
    """COCO mask ground truth and results for images ``order`` (repeats allowed), numbered
    1..len(order): ground-truth ellipses in the boxes, detections as filled boxes."""
    images, annotations, results = [], [], []
    for new_id, i in enumerate(order, start=1):
        images.append({"id": new_id, "width": 128, "height": 128})
        for box, label, crowd in zip(gts[i]["boxes"], gts[i]["labels"], gts[i]["difficult"]):
            m = ellipse_mask(box)[None]
            annotations.append({"id": len(annotations) + 1, "image_id": new_id, "category_id": int(label) + 1,
                                "iscrowd": int(crowd), "area": float(m.sum()), "segmentation": masks_to_rle(m)[0],
                                "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]})
        d = dets[i]
        filled = np.zeros((len(d["boxes"]), 128, 128), np.uint8)
        for k, (x1, y1, x2, y2) in enumerate(np.clip(np.round(d["boxes"]), 0, 128).astype(int)):
            filled[k, y1:y2, x1:x2] = 1
        results.append({**d, "segmentation": masks_to_rle(filled)})
    truth = {"images": images, "categories": [{"id": c + 1, "name": str(c)} for c in range(4)],
             "annotations": annotations}
    return truth, coco_detections(results, range(1, 5), with_masks=True)


@pytest.mark.parametrize("seed", range(2))
def test_mask_records_give_coco_segm_ap_on_the_full_sample_and_on_a_resample(seed):
    gts, dets, _ = random_detection_data(seed, ties=False)
    n = len(gts)
    truth, detections = mask_data(gts, dets, range(n))
    records = mask_matches(truth, detections, list(range(1, n + 1)), list(range(1, 5)), [f"im{i}" for i in range(n)])
    segm = coco_map(truth, detections, "segm")
    assert 0.02 < segm["map"] < 0.95 and 0.1 < segm["ap50"] < 0.95  # not a trivial case
    got = maps_from_matches(records, ["coco", "coco50", "coco75"])
    assert (got["coco"], got["coco50"], got["coco75"]) == pytest.approx((segm["map"], segm["ap50"], segm["ap75"]),
                                                                        abs=1e-6)
    boxes = coco_map(coco_ground_truth([DetectionSample(str(i), "x.png", 128, 128, g["boxes"], g["labels"],
                                                        iscrowd=g["difficult"]) for i, g in enumerate(gts)],
                                       [str(c) for c in range(4)]), coco_detections(dets, range(1, 5)))
    assert abs(got["coco"] - boxes["map"]) > 0.02  # masks are matched by mask IoU, not by box IoU
    weights = bootstrap_weights(n, 2, seed=seed)
    resampled = map_from_matches(records, "coco50", weights)
    for b, row in enumerate(weights):
        drawn = np.repeat(np.arange(n), row)
        expected = coco_map(*mask_data(gts, dets, drawn), "segm")["ap50"]
        assert resampled[b] == pytest.approx(expected, abs=1e-6), b
    with pytest.raises(ValueError, match="image order"):
        mask_matches(truth, detections[::-1], list(range(1, n + 1)), list(range(1, 5)), [str(i) for i in range(n)])
