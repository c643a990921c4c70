"""COCO-protocol numbers equal a direct pycocotools call on the same detections."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from icm.data.records import DetectionDataset, DetectionSample
from icm.evaluation.coco_eval import (
    category_ids_of,
    coco_detections,
    coco_ground_truth,
    coco_map,
    image_ids_of,
    masks_to_rle,
)

CLASSES = ["cat", "dog"]
CATEGORY_IDS = [17, 18]  # COCO's ids for cat and dog


def make_fixture(seed=0):
    rng = np.random.default_rng(seed)
    samples, predictions = [], []
    for i in range(6):
        n = int(rng.integers(1, 4))
        xy = rng.uniform(0, 60, size=(n, 2))
        wh = rng.uniform(8, 40, size=(n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, 2, size=n)
        iscrowd = np.zeros(n, bool)
        if i == 2:
            iscrowd[0] = True
        samples.append(DetectionSample(str(100 + i), f"img{i}.png", 128, 128, boxes, labels, iscrowd=iscrowd))
        jitter = rng.normal(0, 3, size=boxes.shape)
        extra = rng.uniform(0, 100, size=(2, 2))
        pred_boxes = np.concatenate([boxes + jitter, np.concatenate([extra, extra + 20], 1)])
        predictions.append({
            "boxes": pred_boxes,
            "scores": rng.uniform(0.05, 1.0, size=len(pred_boxes)),
            "labels": np.concatenate([labels, rng.integers(0, 2, size=2)]),
        })
    return samples, predictions


def direct_pycocotools(samples, predictions, image_ids):
    """Build the COCO dicts by hand and call pycocotools directly."""
    gt = {"images": [], "annotations": [], "categories": [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}]}
    results = []
    for s, p, image_id in zip(samples, predictions, image_ids):
        gt["images"].append({"id": image_id, "width": 128, "height": 128})
        for box, label, crowd in zip(s.boxes, s.labels, s.iscrowd):
            x1, y1, x2, y2 = map(float, box)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id,
                                      "category_id": CATEGORY_IDS[label], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                      "area": (x2 - x1) * (y2 - y1), "iscrowd": int(crowd)})
        for box, score, label in zip(p["boxes"], p["scores"], p["labels"]):
            x1, y1, x2, y2 = map(float, box)
            results.append({"image_id": image_id, "category_id": CATEGORY_IDS[label],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_coco_numbers_equal_direct_pycocotools():
    samples, predictions = make_fixture()
    dataset = DetectionDataset("fixture", CLASSES, samples, class_ids=CATEGORY_IDS)
    cat_ids, img_ids = category_ids_of(dataset), image_ids_of(dataset, samples)
    assert cat_ids == CATEGORY_IDS and img_ids == [100, 101, 102, 103, 104, 105]
    gt = coco_ground_truth(samples, CLASSES, cat_ids, img_ids)
    ours = coco_map(gt, coco_detections(predictions, cat_ids, img_ids), per_class=True)
    stats = direct_pycocotools(samples, predictions, img_ids)
    assert 0.1 < stats[0] < 0.95  # a fixture with a non-trivial answer
    assert ours["map"] == pytest.approx(stats[0], abs=1e-12)
    assert ours["ap50"] == pytest.approx(stats[1], abs=1e-12)
    assert ours["ap75"] == pytest.approx(stats[2], abs=1e-12)
    assert set(ours["ap_per_class"]) == {"cat", "dog"}
    assert np.mean(list(ours["ap_per_class"].values())) == pytest.approx(ours["map"], abs=1e-9)


def test_difficult_boxes_become_ignored_regions_and_edge_cases():
    samples = [DetectionSample("a", "a.png", 64, 64, [[0, 0, 10, 10], [30, 30, 50, 50]], [0, 0],
                               difficult=[False, True])]
    gt = coco_ground_truth(samples, CLASSES)
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 1]
    perfect = [{"boxes": [[0, 0, 10, 10], [30, 30, 50, 50]], "scores": [0.9, 0.8], "labels": [0, 0]}]
    assert coco_map(gt, coco_detections(perfect, [1, 2]))["map"] == pytest.approx(1.0)
    assert coco_map(gt, [])["map"] == 0.0
    no_objects = coco_ground_truth([DetectionSample("b", "b.png", 64, 64)], CLASSES)
    assert coco_map(no_objects, [])["map"] is None


def test_mask_ap_from_rle():
    mask = np.zeros((1, 32, 32), np.float32)
    mask[0, 4:20, 4:20] = 1.0
    rle = masks_to_rle(mask)
    gt = {"images": [{"id": 1, "width": 32, "height": 32}], "categories": [{"id": 1, "name": "cat"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 16, 16], "area": 256,
                           "iscrowd": 0, "segmentation": rle[0]}]}
    good = {"boxes": [[4, 4, 20, 20]], "scores": [0.9], "labels": [0], "masks": mask}
    shifted = {"boxes": [[4, 4, 20, 20]], "scores": [0.9], "labels": [0], "masks": np.roll(mask, 8, axis=2)}
    assert coco_map(gt, coco_detections([good], [1], with_masks=True), "segm")["map"] == pytest.approx(1.0)
    assert coco_map(gt, coco_detections([shifted], [1], with_masks=True), "segm")["map"] == 0.0


def test_mask_ground_truth_is_matched_by_file_name_and_renumbered(tmp_path):
    from icm.data import load_dataset, make_toy_dataset
    from icm.evaluation.coco_eval import image_ids_of, mask_ground_truth_for

    root = make_toy_dataset(tmp_path / "toy", train=3, val=4, size=64)
    val = load_dataset("toy", split="val", root=root)
    full = json.loads(val.mask_file.read_text())
    subset = val.samples[2:4]  # two images, evaluated as ids 1, 2
    masks = mask_ground_truth_for(full, subset, image_ids_of(val, subset), str(val.mask_file))
    assert [(img["id"], img["file_name"]) for img in masks["images"]] == [(1, "val_00002.png"), (2, "val_00003.png")]
    originals = {a["id"]: a for a in full["annotations"]}
    for ann in masks["annotations"]:
        assert ann["image_id"] == originals[ann["id"]]["image_id"] - 2 and ann["segmentation"] == originals[ann["id"]]["segmentation"]
    assert len(masks["annotations"]) == sum(a["image_id"] in (3, 4) for a in full["annotations"])
    train_masks = json.loads((root / "instances_train.json").read_text())
    with pytest.raises(ValueError, match=r"instances_train.json: no entry for 2 of the 2 evaluated images \(e.g. val_00002.png\)"):
        mask_ground_truth_for(train_masks, subset, [1, 2], str(root / "instances_train.json"))


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_faster_coco_eval_gives_pycocotools_numbers(iou_type):
    """The two COCO backends on the same random set: boxes and masks, crowd regions,
    several classes, images without objects; AP, AP50, AP75 and per-class AP agree."""
    pytest.importorskip("faster_coco_eval")
    from icm.evaluation.coco_eval import coco_map, masks_to_rle

    rng = np.random.default_rng(1)
    images, annotations, detections = [], [], []
    size = 64

    def box_and_mask(x, y, w, h):
        m = np.zeros((1, size, size), np.uint8)
        m[0, int(y):int(y + h), int(x):int(x + w)] = 1
        return [float(x), float(y), float(w), float(h)], masks_to_rle(m)[0], float(m.sum())

    for image_id in range(1, 31):
        images.append({"id": image_id, "width": size, "height": size})
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.integers(0, 40, 2)
            w, h = rng.integers(6, 24, 2)
            bbox, rle, area = box_and_mask(x, y, w, h)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(rng.integers(1, 4)),
                                "bbox": bbox, "area": area, "iscrowd": int(rng.uniform() < 0.1), "segmentation": rle})
            if rng.uniform() < 0.8:  # a detection near it, maybe of another class
                jitter = rng.normal(0, 2, 4)
                bbox, rle, _ = box_and_mask(max(0, x + jitter[0]), max(0, y + jitter[1]), max(2, w + jitter[2]),
                                            max(2, h + jitter[3]))
                cat = annotations[-1]["category_id"] if rng.uniform() < 0.8 else int(rng.integers(1, 4))
                detections.append({"image_id": image_id, "category_id": cat, "bbox": bbox,
                                   "score": float(rng.uniform(0.05, 1)), "segmentation": rle})
        for _ in range(int(rng.integers(0, 3))):  # false positives
            x, y = rng.integers(0, 50, 2)
            bbox, rle, _ = box_and_mask(x, y, 10, 10)
            detections.append({"image_id": image_id, "category_id": int(rng.integers(1, 4)), "bbox": bbox,
                               "score": float(rng.uniform(0.05, 1)), "segmentation": rle})
    truth = {"images": images, "annotations": annotations,
             "categories": [{"id": k, "name": f"c{k}"} for k in (1, 2, 3)]}
    fast = coco_map(truth, detections, iou_type, per_class=True, backend="faster_coco_eval")
    reference = coco_map(truth, detections, iou_type, per_class=True, backend="pycocotools")
    assert 0.05 < reference["map"] < 0.95 and reference["ap50"] > 0.2  # a case with something to rank
    for key in ("map", "ap50", "ap75"):
        assert fast[key] == pytest.approx(reference[key], abs=1e-9), key
    for name, value in reference["ap_per_class"].items():
        assert fast["ap_per_class"][name] == pytest.approx(value, abs=1e-9), name
