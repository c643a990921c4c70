"""Ultralytics detectors (YOLOv3u, YOLOv5u, YOLOv8, YOLO11, RT-DETR) behind :class:`Detector`.

The network is the ``nn.Module`` ultralytics builds (``DetectionModel`` /
``RTDETRDetectionModel``), used directly: no ``YOLO`` predictor, no file or network access
beyond loading weights. Around it, in torch so gradients reach the pixels:

- letterbox: bilinear resize so the long side is ``imgsz`` (``imgsz=None`` keeps the input
  size, as for the 128 px toy models), then pad with 114/255 around the image, centred, to a
  common multiple of the stride for the batch; RT-DETR is resized to ``imgsz`` x ``imgsz``
  without keeping the aspect ratio (ultralytics' ``scale_fill`` for RT-DETR);
- predict: ultralytics' own NMS (YOLO) or top-k of the decoder (RT-DETR), boxes mapped back
  to the input pixels and labels translated from the native classes to the dataset's;
- loss: ultralytics' own criterion (``v8DetectionLoss`` or ``RTDETRDetectionLoss``) with the
  default hyper-parameters of ``ultralytics.cfg.get_cfg()``. YOLO's criterion returns its
  (box, cls, dfl) parts times the batch size; we return their sum divided by the batch size,
  i.e. a per-batch mean whose scale does not grow with the batch (RT-DETR's loss is already
  of that kind).

Zoo architectures (COCO, 80 classes 0..79): ``yolov3`` (yolov3u.pt), ``yolov3-tiny``
(yolov3-tinyu.pt), ``yolov5`` (yolov5nu.pt), ``yolov8`` (yolov8n.pt), ``yolo11`` (yolo11n.pt),
``rtdetr`` (rtdetr-l.pt). Toy architectures (own classes, trained from scratch on CPU):
``toy_yolov3`` (yolov3-tiny at width 0.25, ~0.9 M parameters) and ``toy_yolov8`` (YOLOv8n with
its widest layers capped at 128 channels, ~1.9 M parameters).
"""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from icm.detectors.base import Detector, eval_mode, resolve_classes
from icm.detectors.darknet import build_darknet, is_darknet_weights
from icm.detectors.registry import register
from icm.detectors.weights import WeightsUnavailableError, is_weights_path, weights_unavailable

PAD_VALUE = 114 / 255  # ultralytics' letterbox grey
DARKNET_NAMES = ("yolov3", "yolov3-tiny")  # a .weights file builds the Darknet network instead
ASSETS_URL = "https://github.com/ultralytics/assets/releases/download/v8.4.0"


@dataclass(frozen=True)
class UltralyticsSpec:
    """How to build one registered name: model YAML (+ overrides), zoo file, input size."""

    yaml: str
    weights_file: str | None  # what weights="default" fetches; None: no zoo weights (toy)
    overrides: dict = field(default_factory=dict)
    imgsz: int | None = 640
    rtdetr: bool = False


SPECS: dict[str, UltralyticsSpec] = {
    "yolov3": UltralyticsSpec("yolov3.yaml", "yolov3u.pt"),
    "yolov3-tiny": UltralyticsSpec("yolov3-tiny.yaml", "yolov3-tinyu.pt"),
    "yolov5": UltralyticsSpec("yolov5n.yaml", "yolov5nu.pt"),
    "yolov8": UltralyticsSpec("yolov8n.yaml", "yolov8n.pt"),
    "yolo11": UltralyticsSpec("yolo11n.yaml", "yolo11n.pt"),
    "rtdetr": UltralyticsSpec("rtdetr-l.yaml", "rtdetr-l.pt", {"scale": "l"}, rtdetr=True),
    "toy_yolov3": UltralyticsSpec("yolov3-tiny.yaml", None, {"width_multiple": 0.25}, imgsz=None),
    "toy_yolov8": UltralyticsSpec("yolov8n.yaml", None, {"scales": {"n": [0.33, 0.25, 512]}}, imgsz=None),
}


def _quiet_ultralytics() -> None:
    # No pip installs at run time: ultralytics otherwise tries to install optional
    # packages (e.g. pi-heif when Pillow meets an unknown file). Users can still opt in.
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    import ultralytics  # noqa: F401  (configures its logger on import; quieten it after)

    logging.getLogger("ultralytics").setLevel(logging.WARNING)


def _model_class(spec: UltralyticsSpec) -> type[nn.Module]:
    from ultralytics.nn.tasks import DetectionModel, RTDETRDetectionModel

    return RTDETRDetectionModel if spec.rtdetr else DetectionModel


def _architecture(spec: UltralyticsSpec) -> dict:
    from ultralytics.nn.tasks import yaml_model_load

    return {**yaml_model_load(spec.yaml), **copy.deepcopy(spec.overrides)}


def _load_zoo_network(name: str, spec: UltralyticsSpec, weights: str | Path, trust_pickle: bool = False) -> nn.Module:
    """A network from an ultralytics ``.pt`` file, through ultralytics' own loader (which
    downloads official assets by bare name when online).

    Those files are pickles, and unpickling can run code, so they load through the
    library's safe mode: ``torch.load(weights_only=True)`` against ultralytics' allow-list
    of its own model classes, whether the file is an official asset (also one read back
    from a cache) or a local path. A file the allow-list refuses was not run; with
    ``trust_pickle`` it loads unrestricted (``scripts/convert_weights.py --trust_pickle``
    converts one once into our checkpoint format, which holds plain data)."""
    from ultralytics.nn import tasks
    from ultralytics.nn.tasks import load_checkpoint
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES

    default = weights == "default"
    if default and spec.weights_file is None:
        raise WeightsUnavailableError(
            f"{name}: no default weights (a toy detector, trained by scripts/train_detector.py); "
            f"pass --weights {name}=PATH, or weights=None to start from random weights"
        )
    file = spec.weights_file if default else str(weights)
    if not default and not Path(file).is_file() and Path(file).name not in GITHUB_ASSETS_NAMES:
        raise FileNotFoundError(f"{file}: weights file not found")
    if not trust_pickle and not tasks._SafeLoad.SUPPORTED:
        raise ValueError(f"{file}: ultralytics' safe loader needs torch >= 2.6; convert the file once with "
                         f"python scripts/convert_weights.py {name} {file} OUT.pt --trust_pickle if you trust it")
    previous = tasks.SAFE_LOAD
    tasks.SAFE_LOAD = not trust_pickle  # read by ultralytics at each load: weights_only + its allow-list
    try:
        network, _ = load_checkpoint(file)
    except (ConnectionError, OSError) as e:  # offline: ultralytics raises ConnectionError
        if Path(file).is_file():
            raise
        raise weights_unavailable(name, Path(file).name, f"{ASSETS_URL}/{Path(file).name}", e) from e
    except TypeError as e:  # ultralytics' message for a corrupt, foreign or refused file
        if "outside the supported" in str(e):
            raise ValueError(
                f"{file}: ultralytics' safe loader refused it (it references types outside ultralytics' own model "
                f"classes; nothing in it was run). If it comes from a source you trust, convert it once: python "
                f"scripts/convert_weights.py {name} {file} OUT.pt --trust_pickle, then pass --weights {name}=OUT.pt"
            ) from e
        raise ValueError(f"{file}: not a loadable ultralytics checkpoint ({str(e).splitlines()[0]})") from e
    finally:
        tasks.SAFE_LOAD = previous
    return network


class UltralyticsDetector(Detector):
    """An ultralytics network with letterboxing, NMS and label translation in torch."""

    family = "ultralytics"

    def __init__(
        self,
        name: str,
        network: nn.Module,
        classes: list[str],
        native_classes: list[str],
        imgsz: int | None,
        conf: float = 0.001,
        iou: float = 0.7,
        max_det: int = 300,
        rtdetr: bool = False,
        pseudo_threshold: float = 0.3,
    ) -> None:
        super().__init__(classes, pseudo_threshold=pseudo_threshold, native_classes=native_classes)
        from ultralytics.cfg import get_cfg

        self.name = name
        self.model = network
        self.model.names = dict(enumerate(native_classes))
        self.model.nc = len(native_classes)  # as ultralytics' trainer sets it (RT-DETR's loss reads it)
        self.model.args = get_cfg()  # the loss hyper-parameters (box, cls, dfl gains)
        self.model.criterion = None
        self.imgsz = imgsz
        self.conf, self.iou, self.max_det = conf, iou, max_det
        self.rtdetr = rtdetr
        self.stride = max(int(network.stride.max()), 32)
        self.build_kwargs = {
            "arch": copy.deepcopy(network.yaml),
            "imgsz": imgsz,
            "conf": conf,
            "iou": iou,
            "max_det": max_det,
        }

    def set_trainable(self, trainable: bool) -> UltralyticsDetector:
        """As :meth:`Detector.set_trainable`, keeping the fixed DFL projection frozen (as
        ultralytics' trainer does)."""
        super().set_trainable(trainable)
        for name, p in self.model.named_parameters():
            if ".dfl" in name:
                p.requires_grad_(False)
        return self

    # ------------------------------------------------------------------ preprocessing

    def _resized(self, h: int, w: int) -> tuple[int, int]:
        if self.rtdetr and self.imgsz:  # RT-DETR is run stretched to a square, as ultralytics does
            return self.imgsz, self.imgsz
        r = self.imgsz / max(h, w) if self.imgsz else 1.0
        return max(1, round(h * r)), max(1, round(w * r))

    def canvas(self, height: int, width: int) -> tuple:
        """The resized image and its own stride-multiple canvas: equal ones are letterboxed alike."""
        nh, nw = self._resized(height, width)
        return nh, nw, math.ceil(nh / self.stride) * self.stride, math.ceil(nw / self.stride) * self.stride

    def letterbox(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[float, ...]]]:
        """Images -> padded batch [B, 3, H, W] and per image (scale_x, scale_y, left, top, w, h)."""
        resized, metas = [], []
        for img in images:
            img = img.to(device=self.device, dtype=torch.float32)
            h, w = img.shape[-2:]
            nh, nw = self._resized(h, w)
            x = img[None]
            if (nh, nw) != (h, w):
                x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
            resized.append(x)
            metas.append((nw / w, nh / h, nw, nh, w, h))
        H = math.ceil(max(m[3] for m in metas) / self.stride) * self.stride
        W = math.ceil(max(m[2] for m in metas) / self.stride) * self.stride
        batch, out_metas = [], []
        for x, (sx, sy, nw, nh, w, h) in zip(resized, metas):
            left, top = (W - nw) // 2, (H - nh) // 2
            batch.append(F.pad(x, (left, W - nw - left, top, H - nh - top), value=PAD_VALUE))
            out_metas.append((sx, sy, left, top, w, h))
        return torch.cat(batch), out_metas

    # ------------------------------------------------------------------ predict

    def predict_raw(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        x, metas = self.letterbox(images)
        with eval_mode(self.model):
            out = self.model(x)
        y = out[0] if isinstance(out, (tuple, list)) else out
        dets = self._rtdetr_detections(y, x.shape[-2:]) if self.rtdetr else self._nms(y)
        results = []
        for det, (sx, sy, left, top, w, h) in zip(dets, metas):
            offset = det.new_tensor([left, top, left, top])
            scale = det.new_tensor([sx, sy, sx, sy])
            boxes = (det[:, :4] - offset) / scale
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            labels, keep = self.label_map.to_dataset(det[:, 5].long())
            results.append({"boxes": boxes[keep], "scores": det[keep, 4].clamp(0, 1), "labels": labels})
        return results

    def _nms(self, y: torch.Tensor) -> list[torch.Tensor]:
        from ultralytics.utils.nms import non_max_suppression

        return non_max_suppression(y, self.conf, self.iou, max_det=self.max_det, nc=len(self.native_classes))

    def _rtdetr_detections(self, y: torch.Tensor, hw: torch.Size) -> list[torch.Tensor]:
        """RT-DETR output [B, Q, 6] (normalised cx, cy, w, h, score, class) -> [N, 6] xyxy pixels."""
        from ultralytics.utils.ops import xywh2xyxy

        H, W = hw
        dets = []
        for pred in y:
            boxes = xywh2xyxy(pred[:, :4]) * pred.new_tensor([W, H, W, H])
            scores, order = pred[:, 4].sort(descending=True)
            keep = order[scores > self.conf][: self.max_det]
            dets.append(torch.cat([boxes[keep], pred[keep, 4:6]], 1))
        return dets

    # ------------------------------------------------------------------ loss

    def loss_raw(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        x, metas = self.letterbox(images)
        H, W = x.shape[-2:]
        cls, bboxes, batch_idx = [], [], []
        for i, (t, (sx, sy, left, top, _, _)) in enumerate(zip(targets, metas)):
            labels, keep = self.label_map.to_native(torch.as_tensor(t["labels"], device=self.device))
            boxes = torch.as_tensor(t["boxes"], device=self.device, dtype=torch.float32).reshape(-1, 4)[keep]
            boxes = boxes * boxes.new_tensor([sx, sy, sx, sy]) + boxes.new_tensor([left, top, left, top])
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, W)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, H)
            wh = boxes[:, 2:] - boxes[:, :2]
            valid = (wh > 0).all(1)
            xywh = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, wh], 1)[valid] / boxes.new_tensor([W, H, W, H])
            cls.append(labels[valid].float())
            bboxes.append(xywh)
            batch_idx.append(torch.full((int(valid.sum()),), float(i), device=self.device))
        batch = {
            "img": x,
            "cls": torch.cat(cls).view(-1, 1),
            "bboxes": torch.cat(bboxes).view(-1, 4),
            "batch_idx": torch.cat(batch_idx),
        }
        criterion = self.model.criterion
        if criterion is not None and getattr(criterion, "device", self.device) != self.device:
            self.model.criterion = None  # moved to another device: rebuild
        loss, _ = self.model.loss(batch)
        return loss if self.rtdetr else loss.sum() / len(images)


def build_ultralytics(
    name: str,
    classes: list[str] | None = None,
    num_classes: int | None = None,
    weights: str | Path | None = "default",
    device: str | torch.device = "cpu",
    imgsz: int | None | str = "spec",
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
    arch: dict | None = None,
    pseudo_threshold: float = 0.3,
    trust_pickle: bool = False,
) -> UltralyticsDetector:
    """Build the ultralytics detector registered as ``name``.

    Without ``num_classes`` the head keeps the classes of the weights (COCO's 80 for zoo
    files) and predictions are translated to ``classes``; with it, the head has
    ``num_classes`` classes of its own (zoo weights then transfer except the class layer).
    ``imgsz``: long side of the letterboxed input (default 640 for zoo models, ``None`` =
    input size for toy models); ``conf``/``iou``/``max_det``: NMS settings of ``predict``;
    ``arch``: a model YAML dict instead of the registered one (stored in our checkpoints);
    ``trust_pickle``: load an ultralytics ``.pt`` file without the safe loader's allow-list
    (a pickle that may run code: see _load_zoo_network).
    """
    _quiet_ultralytics()
    spec = SPECS[name]
    if imgsz == "spec":
        imgsz = spec.imgsz
    zoo_network = None
    if weights == "default" or is_weights_path(weights):
        zoo_network = _load_zoo_network(name, spec, weights, trust_pickle)
    if zoo_network is not None and num_classes is None:
        names = zoo_network.names
        native, dataset = resolve_classes(classes, None, [str(v) for v in (names.values() if isinstance(names, dict) else names)])
    else:
        default_native = None
        if spec.weights_file is not None and num_classes is None:  # a zoo architecture: COCO head
            from icm.data.classmaps import COCO_CLASSES

            default_native = COCO_CLASSES
        native, dataset = resolve_classes(classes, num_classes, default_native)

    model_class = _model_class(spec)
    if zoo_network is not None and zoo_network.model[-1].nc == len(native):
        network = zoo_network
    else:
        cfg = copy.deepcopy(arch) if arch is not None else (zoo_network.yaml if zoo_network is not None else _architecture(spec))
        network = model_class(copy.deepcopy(cfg), nc=len(native), verbose=False)
        if zoo_network is not None:  # fine-tuning a zoo model on other classes
            network.names = dict(enumerate(native))
            network.load(zoo_network, verbose=False)
    detector = UltralyticsDetector(
        name, network, dataset, native, imgsz, conf=conf, iou=iou, max_det=max_det,
        rtdetr=spec.rtdetr, pseudo_threshold=pseudo_threshold,
    )
    return detector.to(device)


def _register(name: str) -> None:
    def builder(**kwargs) -> Detector:
        if name in DARKNET_NAMES and is_darknet_weights(kwargs.get("weights")):
            return build_darknet(name, **kwargs)  # Darknet's own .cfg + .weights
        return build_ultralytics(name, **kwargs)

    builder.__doc__ = build_ultralytics.__doc__
    register(name)(builder)


for _name in SPECS:
    _register(_name)
