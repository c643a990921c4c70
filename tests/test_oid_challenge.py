"""icm.evaluation.oid_challenge: worked cases derived by hand from the challenge protocol,
and a cross-check of the per-image matching against the TensorFlow Object Detection API's
``per_image_evaluation`` where it imports (``make crosscheck-oid``; skipped otherwise)."""

import numpy as np
import pytest

from icm.evaluation.oid_challenge import (
    OIDImageTruth,
    average_precision,
    class_ancestors,
    class_descendants,
    expand_ground_truth,
    match_one_class,
    oid_challenge_map,
)

A = [10, 10, 50, 50]  # an ordinary box
G = [100, 100, 200, 200]  # a group-of box


def test_group_of_box_gives_one_credit_and_hides_the_other_detections_inside_it():
    dets = np.array([[11, 11, 50, 50],  # IoU 0.95 with A: true positive
                     [110, 110, 130, 130],  # inside G (IoA 1)
                     [150, 150, 190, 190],  # inside G too: hidden, no second credit
                     [300, 300, 340, 340]])  # nowhere: false positive
    scores, weights = match_one_class(dets, [0.9, 0.8, 0.7, 0.6], [A, G], [False, True])
    assert scores.tolist() == [0.9, 0.6, 0.8] and weights.tolist() == [1.0, 0.0, 1.0]
    # Two positives (A and G), both found before the false positive: AP 1.
    assert average_precision(scores, weights, 2) == pytest.approx(1.0)


def test_a_group_of_box_nothing_falls_into_is_a_missed_instance():
    scores, weights = match_one_class([[11, 11, 50, 50]], [0.9], [A, G], [False, True])
    assert weights.tolist() == [1.0]
    assert average_precision(scores, weights, 2) == pytest.approx(0.5)


def test_iou_below_the_threshold_is_not_enough_but_ioa_inside_a_group_is():
    small = [120, 120, 140, 140]  # IoU with G is 0.04, IoA is 1
    scores, weights = match_one_class([small], [0.5], [G], [True])
    assert weights.tolist() == [1.0]
    scores, weights = match_one_class([small], [0.5], [G], [False])  # the same box, not group-of
    assert weights.tolist() == [0.0]


def test_a_duplicate_is_a_false_positive_unless_it_lies_in_a_group_of_box():
    scores, weights = match_one_class([[10, 10, 50, 50], [12, 12, 50, 50]], [0.9, 0.8], [A], [False])
    assert weights.tolist() == [1.0, 0.0]
    big_group = [0, 0, 60, 60]  # A lies inside a group-of box of the same class
    scores, weights = match_one_class([[10, 10, 50, 50], [12, 12, 50, 50]], [0.9, 0.8], [A, big_group], [False, True])
    assert scores.tolist() == [0.9, 0.8] and weights.tolist() == [1.0, 1.0]  # the duplicate earns the group's credit


def test_all_point_average_precision_by_hand():
    # TP, FP, TP of 3 positives: precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3 -> made
    # monotone: 1 up to recall 1/3, 2/3 up to 2/3: AP = 1/3 * 1 + 1/3 * 2/3.
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([1.0, 0.0, 1.0]), 3) == pytest.approx(1 / 3 + 2 / 9)
    assert np.isnan(average_precision(np.zeros(0), np.zeros(0), 0))
    assert average_precision(np.zeros(0), np.zeros(0), 2) == 0.0


def test_only_verified_classes_count_in_an_image():
    # Classes 0 (boxed), 1 (verified absent), 2 (not verified in this image).
    truth = OIDImageTruth(boxes=np.array([A], float), labels=np.array([0]), group_of=np.array([False]), verified={1})
    pred = {"boxes": np.array([A, [60, 60, 90, 90], [60, 60, 90, 90]], float), "scores": np.array([0.9, 0.8, 0.7]),
            "labels": np.array([0, 1, 2])}
    result = oid_challenge_map([truth], [pred], num_classes=3)
    # Class 0: AP 1. Class 1: verified, no boxes: its detection is a false positive, but it
    # has no positives, so no AP. Class 2: its detection is ignored.
    assert result["ap_per_class"] == {0: 1.0, 1: None, 2: None} and result["map"] == 1.0 and result["classes"] == [0]
    second = OIDImageTruth(boxes=np.array([[60, 60, 90, 90]], float), labels=np.array([1]), group_of=np.array([False]))
    result = oid_challenge_map([truth, second], [pred, {"boxes": np.zeros((0, 4)), "scores": np.zeros(0),
                                                        "labels": np.zeros(0, int)}], num_classes=3)
    assert result["ap_per_class"][1] == 0.0  # its one detection (image 1) was a false positive; the box was missed
    assert result["map"] == pytest.approx(0.5)
    assert oid_challenge_map([truth], [pred], num_classes=3, classes=[1, 2])["map"] is None  # a subset


def test_hierarchy_expansion_up_for_boxes_and_positives_down_for_negatives():
    hierarchy = {"LabelName": "/m/root", "Subcategory": [
        {"LabelName": "/m/person", "Subcategory": [{"LabelName": "/m/man"}, {"LabelName": "/m/woman"}]},
        {"LabelName": "/m/animal", "Subcategory": [{"LabelName": "/m/dog", "Subcategory": [{"LabelName": "/m/puppy"}]}]},
    ]}
    ancestors = class_ancestors(hierarchy)
    assert ancestors["/m/man"] == {"/m/person"} and ancestors["/m/puppy"] == {"/m/animal", "/m/dog"}
    assert ancestors["/m/person"] == set() and "/m/root" not in ancestors
    assert class_descendants(ancestors)["/m/animal"] == {"/m/dog", "/m/puppy"}
    labels, boxes, group, pos, neg = expand_ground_truth(["/m/man", "/m/puppy"], np.array([A, G], float), [False, True],
                                                         positive=["/m/woman"], negative=["/m/animal"], ancestors=ancestors)
    assert labels == ["/m/man", "/m/person", "/m/puppy", "/m/animal", "/m/dog"]
    assert boxes.tolist() == [A, A, G, G, G] and group.tolist() == [False, False, True, True, True]
    assert pos == {"/m/woman", "/m/person"} and neg == {"/m/animal", "/m/dog", "/m/puppy"}


def test_per_image_matching_equals_the_tensorflow_object_detection_api():
    per_image = pytest.importorskip("object_detection.utils.per_image_evaluation",
                                    reason="the TF Object Detection API's per_image_evaluation (make crosscheck-oid)")
    # This build (0.0.3) still runs NMS inside the matching, which the challenge protocol
    # does not: an IoU threshold of 1 and no cap switch it off.
    reference = per_image.PerImageEvaluation(num_groundtruth_classes=1, matching_iou_threshold=0.5, group_of_weight=1.0,
                                             nms_iou_threshold=1.0, nms_max_output_boxes=10_000)
    rng = np.random.default_rng(0)
    compared = 0
    for _ in range(300):
        def boxes(n):
            xy = rng.uniform(0, 80, (n, 2))
            wh = rng.uniform(5, 40, (n, 2))
            return np.concatenate([xy, xy + wh], 1).astype(np.float32)

        n_gt, n_det = int(rng.integers(0, 5)), int(rng.integers(1, 8))
        gt = boxes(n_gt)
        dets = np.concatenate([gt[rng.integers(0, n_gt, n_det // 2)] + rng.normal(0, 3, (n_det // 2, 4)), boxes(n_det - n_det // 2)]
                              ) if n_gt else boxes(n_det)
        dets = np.concatenate([np.minimum(dets[:, :2], dets[:, 2:] - 1), dets[:, 2:]], 1).astype(np.float32)  # valid boxes
        scores = np.sort(rng.uniform(0.05, 1, len(dets)))[::-1].astype(np.float32)  # distinct, sorted as the API expects
        group = rng.uniform(size=n_gt) < 0.4
        ref_scores, ref_tp = reference._compute_tp_fp_for_single_class(dets, scores, gt, np.zeros(n_gt, bool), group)
        ours_scores, ours_tp = match_one_class(dets, scores, gt, group)
        np.testing.assert_allclose(ours_scores, ref_scores, rtol=1e-6)
        np.testing.assert_array_equal(ours_tp, np.asarray(ref_tp, dtype=float))
        compared += 1
    assert compared == 300
