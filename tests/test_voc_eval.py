"""VOC07 11-point and VOC12 all-point AP against values computed by hand."""

import numpy as np
import pytest
import torch

from icm.voc_eval import average_precision, voc_map

# Two images, classes 0 (cat), 1 (dog), 2 (bird, no ground truth).
GROUND_TRUTH = [
    {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 70, 70]], "labels": [0, 0, 1],
     "difficult": [False, True, False]},
    {"boxes": [[0, 0, 20, 20]], "labels": [0], "difficult": [False]},
]
DETECTIONS = [
    {"boxes": [[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10], [40, 40, 50, 50], [50, 50, 70, 70],
               [60, 0, 70, 10]],
     "scores": [0.9, 0.8, 0.7, 0.6, 0.4, 0.3], "labels": [0, 0, 0, 0, 1, 2]},
    {"boxes": [[0, 0, 20, 20], [0, 0, 5, 5]], "scores": [0.5, 0.95], "labels": [0, 1]},
]
# cat, ranked: 0.9 TP | 0.8 on the difficult box: ignored | 0.7 duplicate: FP | 0.6 FP | 0.5 TP
#   recall .5 .5 .5 .5 1, precision 1 1 .5 .333 .5 (2 positives: the difficult box is not one)
#   VOC07: thresholds 0..0.5 reach precision 1, 0.6..1 reach 0.5 -> (6 + 2.5) / 11
#   VOC12: envelope 1 up to recall .5, then .5 -> .5 * 1 + .5 * .5 = .75
# dog, ranked: 0.95 FP (image 1 has no dog) | 0.4 TP -> recall 0 1, precision 0 .5: AP .5 both
CAT_07, CAT_12, DOG = 8.5 / 11, 0.75, 0.5


def test_voc07_and_voc12_match_hand_computed_values():
    r07 = voc_map(GROUND_TRUTH, DETECTIONS, num_classes=3, use_07_metric=True)
    r12 = voc_map(GROUND_TRUTH, DETECTIONS, num_classes=3, use_07_metric=False)
    assert r07.ap_per_class[:2] == pytest.approx([CAT_07, DOG])
    assert r12.ap_per_class[:2] == pytest.approx([CAT_12, DOG])
    assert r07.ap_per_class[2] is None and r12.ap_per_class[2] is None  # bird: no ground truth
    assert r07.map == pytest.approx((CAT_07 + DOG) / 2)
    assert r12.map == pytest.approx((CAT_12 + DOG) / 2)
    assert r12.num_positives == [2, 1, 0]


def test_difficult_box_counts_when_not_flagged():
    gt = [dict(g, difficult=[False] * len(g["labels"])) for g in GROUND_TRUTH]
    # cat: 3 positives; ranks TP TP FP FP TP -> recall 1/3 2/3 2/3 2/3 1, precision 1 1 2/3 1/2 3/5
    r12 = voc_map(gt, DETECTIONS, num_classes=2, use_07_metric=False)
    assert r12.ap_per_class[0] == pytest.approx(1 / 3 + 1 / 3 + 1 / 3 * 0.6)


def test_tensors_and_missing_difficult_are_accepted():
    gt = [{"boxes": torch.tensor(g["boxes"], dtype=torch.float32), "labels": torch.tensor(g["labels"])}
          for g in GROUND_TRUTH]
    dets = [{k: torch.tensor(v) for k, v in d.items()} for d in DETECTIONS]
    r = voc_map(gt, dets, num_classes=2)
    assert r.ap_per_class[0] == pytest.approx(1 / 3 + 1 / 3 + 1 / 3 * 0.6)


def test_perfect_and_empty_detections():
    perfect = [{"boxes": g["boxes"], "scores": np.ones(len(g["labels"])), "labels": g["labels"]}
               for g in GROUND_TRUTH]
    assert voc_map(GROUND_TRUTH, perfect, 2, use_07_metric=True).map == pytest.approx(1.0)
    empty = [{"boxes": np.zeros((0, 4)), "scores": [], "labels": []} for _ in GROUND_TRUTH]
    assert voc_map(GROUND_TRUTH, empty, 2).map == 0.0


def test_no_ground_truth_gives_no_map_like_the_coco_protocol():
    from icm.evaluation.coco_eval import coco_map

    no_boxes = [{"boxes": np.zeros((0, 4)), "labels": []} for _ in DETECTIONS]
    only_difficult = [{"boxes": [[0, 0, 10, 10]], "labels": [0], "difficult": [True]} for _ in DETECTIONS]
    for gt in (no_boxes, only_difficult):
        for use_07 in (True, False):
            r = voc_map(gt, DETECTIONS, 3, use_07_metric=use_07)
            assert r.map is None and r.ap_per_class == [None, None, None] and r.num_positives == [0, 0, 0]
    coco_gt = {"images": [{"id": 1, "width": 80, "height": 80}], "annotations": [],
               "categories": [{"id": 1, "name": "cat"}]}
    assert coco_map(coco_gt, [])["map"] is None


def test_average_precision_07_vs_12_differ_on_a_known_curve():
    recall, precision = np.array([0.25, 0.5, 0.75]), np.array([1.0, 0.5, 0.6])
    # VOC12: .25 * 1 + .25 * .6 + .25 * .6 = .55; VOC07: t 0..0.2 -> 1 (3x), 0.3..0.7 -> .6 (5x)
    assert average_precision(recall, precision, use_07_metric=False) == pytest.approx(0.55)
    assert average_precision(recall, precision, use_07_metric=True) == pytest.approx((3 + 3) / 11)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="ground-truth images"):
        voc_map(GROUND_TRUTH, DETECTIONS[:1], 2)


def _greedy_reference(gt_boxes, gt_difficult, det_image, det_boxes, det_scores, iou_threshold=0.5):
    """The devkit's loop, one detection at a time, as the vectorised matching must reproduce."""
    matched = [np.zeros(len(b), dtype=bool) for b in gt_boxes]
    order = np.argsort(-np.asarray(det_scores, dtype=np.float64), kind="stable")
    flags = np.zeros(len(order), dtype=np.int8)
    for rank, d in enumerate(order):
        i, gts = int(det_image[d]), gt_boxes[int(det_image[d])]
        if len(gts) == 0:
            continue
        box = det_boxes[d]
        w = np.clip(np.minimum(gts[:, 2], box[2]) - np.maximum(gts[:, 0], box[0]), 0, None)
        h = np.clip(np.minimum(gts[:, 3], box[3]) - np.maximum(gts[:, 1], box[1]), 0, None)
        union = (box[2] - box[0]) * (box[3] - box[1]) + (gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1]) - w * h
        ious = np.where(union > 0, w * h / np.maximum(union, 1e-12), 0.0)
        j = int(np.argmax(ious))
        if ious[j] >= iou_threshold:
            if gt_difficult[i][j]:
                flags[rank] = -1
            elif not matched[i][j]:
                flags[rank], matched[i][j] = 1, True
    return order, flags


def test_vectorised_matching_equals_the_greedy_loop():
    from icm.voc_eval import match_detections

    rng = np.random.default_rng(0)
    for _ in range(200):
        n_images = int(rng.integers(1, 6))
        gt_boxes, gt_difficult = [], []
        for _ in range(n_images):
            n = int(rng.integers(0, 5))
            xy = rng.uniform(0, 60, (n, 2))
            gt_boxes.append(np.concatenate([xy, xy + rng.uniform(4, 30, (n, 2))], 1))
            gt_difficult.append(rng.uniform(size=n) < 0.2)
        n_det = int(rng.integers(0, 15))
        det_image = rng.integers(0, n_images, n_det)
        det_boxes = np.empty((n_det, 4))
        for d, i in enumerate(det_image):
            if len(gt_boxes[i]) and rng.uniform() < 0.7:  # near a box of its image (duplicates too)
                det_boxes[d] = gt_boxes[i][rng.integers(len(gt_boxes[i]))] + rng.normal(0, 2, 4)
            else:
                xy = rng.uniform(0, 60, 2)
                det_boxes[d] = np.concatenate([xy, xy + rng.uniform(4, 30, 2)])
        det_scores = rng.choice([0.2, 0.5, 0.9], n_det) if rng.uniform() < 0.3 else rng.uniform(size=n_det)  # ties
        ours = match_detections(gt_boxes, gt_difficult, det_image, det_boxes, det_scores)
        expected = _greedy_reference(gt_boxes, gt_difficult, det_image, det_boxes, det_scores)
        np.testing.assert_array_equal(ours[0], expected[0])
        np.testing.assert_array_equal(ours[1], expected[1])
