"""Darknet's YOLOv3 family (``.cfg`` + ``.weights``, the original format of the paper's
YOLOv3 generation) behind :class:`Detector`.

Ultralytics' YOLOv3 ports have anchor-free heads, so Darknet files need their own network:
this module builds it from the ``.cfg`` (``convolutional``, ``maxpool``, ``upsample``,
``route``, ``shortcut``, ``yolo`` sections: what YOLOv3 and YOLOv3-tiny use) and loads the
``.weights`` strictly: the header (major, minor, revision, images seen), then for each
convolution in order its batch-norm bias, scale, mean and variance (or its conv bias) and
its kernel, every byte used and none missing.

Around the network, in torch so that gradients reach the pixels:

- letterbox as Darknet's ``letterbox_image``: bilinear resize keeping the aspect ratio to
  fit the ``[net]`` width x height, centred on grey 0.5;
- predict: each ``yolo`` layer decodes x = (sigmoid(tx) + col) * stride, w = exp(tw) * anchor,
  score = sigmoid(objectness) * sigmoid(class), then per-class NMS at IoU 0.45 (Darknet's
  ``detector test`` setting), boxes mapped back to the input image;
- loss (YOLOv3's, for the differentiable attack and fine-tuning): each ground-truth box is
  assigned to the anchor of best shape IoU among all the ``yolo`` layers' anchors, in the
  cell of its centre; BCE on the centre offsets and squared error on log(w / anchor), both
  weighted by 2 - w * h (relative area), BCE objectness (no penalty where a prediction
  already overlaps a ground truth by more than the layer's ``ignore_thresh``) and BCE on
  the classes; summed, divided by the batch size.

Registered names: ``yolov3-tiny`` and ``yolov3`` take ``--weights NAME=PATH.weights`` with the
``.cfg`` beside it (same stem), e.g. Darknet's COCO-trained YOLOv3-tiny that
``scripts/fetch_real_assets.py`` extracts. Native classes: COCO's 80 (the ``.cfg``'s
``classes``); ``coco.names`` beside the weights, when present, names them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from icm.detectors.base import Detector, resolve_classes

LETTERBOX_GREY = 0.5
NMS_IOU = 0.45
HEADER_INT32 = 3  # major, minor, revision; then "seen": int64 from version 0.2 on, else int32


def parse_cfg(path: str | os.PathLike) -> list[dict[str, str]]:
    """The sections of a Darknet ``.cfg``, in order: ``{"type": name, key: value, ...}``."""
    sections: list[dict[str, str]] = []
    for line_no, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ValueError(f"{path}:{line_no}: bad section header {line!r}")
            sections.append({"type": line[1:-1].strip()})
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1][key.strip()] = value.strip()
        else:
            raise ValueError(f"{path}:{line_no}: expected a [section] or key=value, got {line!r}")
    if not sections or sections[0]["type"] not in ("net", "network"):
        raise ValueError(f"{path}: a Darknet .cfg starts with a [net] section")
    return sections


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.replace(" ", "").split(",") if v]


class YOLOLayer(nn.Module):
    """A ``yolo`` section: which anchors (input pixels) its outputs predict, and its classes."""

    def __init__(self, anchors: list[tuple[float, float]], mask: list[int], num_classes: int,
                 ignore_thresh: float) -> None:
        super().__init__()
        self.mask = mask
        self.num_classes = num_classes
        self.ignore_thresh = ignore_thresh
        self.register_buffer("anchors", torch.tensor([anchors[i] for i in mask], dtype=torch.float32),
                             persistent=False)


class DarknetNet(nn.Module):
    """The network a ``.cfg`` describes; ``forward`` returns each ``yolo`` layer's raw map
    [B, A, H, W, 5 + C] (tx, ty, tw, th, objectness, classes: logits)."""

    def __init__(self, sections: list[dict[str, str]]) -> None:
        super().__init__()
        net = sections[0]
        self.width, self.height = int(net.get("width", 416)), int(net.get("height", 416))
        self.sections = sections[1:]
        self.layers = nn.ModuleList()
        channels: list[int] = []
        in_channels = int(net.get("channels", 3))
        self.all_anchors: list[tuple[float, float]] = []
        for i, s in enumerate(self.sections):
            kind = s["type"]
            if kind == "convolutional":
                filters, size = int(s["filters"]), int(s["size"])
                stride, bn = int(s.get("stride", 1)), int(s.get("batch_normalize", 0))
                pad = size // 2 if int(s.get("pad", 0)) else int(s.get("padding", 0))
                layer = nn.Sequential()
                layer.add_module("conv", nn.Conv2d(in_channels, filters, size, stride, pad, bias=not bn))
                if bn:
                    layer.add_module("bn", nn.BatchNorm2d(filters, momentum=0.01, eps=1e-5))
                activation = s.get("activation", "linear")
                if activation == "leaky":
                    layer.add_module("act", nn.LeakyReLU(0.1))
                elif activation != "linear":
                    raise ValueError(f"section {i + 1} ({kind}): activation {activation!r} is not supported")
                out_channels = filters
            elif kind == "maxpool":
                layer, out_channels = nn.Identity(), in_channels
            elif kind == "upsample":
                layer, out_channels = nn.Upsample(scale_factor=int(s.get("stride", 2)), mode="nearest"), in_channels
            elif kind == "route":
                sources = [j if j >= 0 else i + j for j in _ints(s["layers"])]
                layer, out_channels = nn.Identity(), sum(channels[j] for j in sources)
            elif kind == "shortcut":
                layer, out_channels = nn.Identity(), in_channels
            elif kind == "yolo":
                values = [float(v) for v in s["anchors"].replace(" ", "").split(",") if v]
                anchors = list(zip(values[0::2], values[1::2]))
                self.all_anchors = anchors
                mask = _ints(s.get("mask", ",".join(str(j) for j in range(len(anchors)))))
                layer = YOLOLayer(anchors, mask, int(s["classes"]), float(s.get("ignore_thresh", 0.7)))
                out_channels = in_channels
            else:
                raise ValueError(f"section {i + 1}: [{kind}] is not supported (YOLOv3 / YOLOv3-tiny sections only)")
            self.layers.append(layer)
            channels.append(out_channels)
            in_channels = out_channels
        self.yolo_layers = [layer for layer in self.layers if isinstance(layer, YOLOLayer)]
        if not self.yolo_layers:
            raise ValueError("the .cfg has no [yolo] section")
        self.num_classes = self.yolo_layers[0].num_classes

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, YOLOLayer, int]]:
        """[(raw map [B, A, H, W, 5 + C], its yolo layer, its stride in input pixels)]."""
        outputs, cache = [], []
        height = x.shape[-2]
        for i, (s, layer) in enumerate(zip(self.sections, self.layers)):
            kind = s["type"]
            if kind == "maxpool":
                size, stride = int(s["size"]), int(s.get("stride", 1))
                if stride == 1:  # Darknet pads bottom/right so the size stays (max of edge copies)
                    x = F.pad(x, (0, size - 1, 0, size - 1), mode="replicate")
                x = F.max_pool2d(x, size, stride)
            elif kind == "route":
                x = torch.cat([cache[j if j >= 0 else i + j] for j in _ints(s["layers"])], 1)
            elif kind == "shortcut":
                j = int(s["from"])
                x = x + cache[j if j >= 0 else i + j]
            elif kind == "yolo":
                b, _, h, w = x.shape
                raw = x.view(b, len(layer.mask), 5 + layer.num_classes, h, w).permute(0, 1, 3, 4, 2)
                outputs.append((raw, layer, height // h))
            else:
                x = layer(x)
            cache.append(x)
        return outputs


def expected_weights_bytes(net: DarknetNet, seen_int64: bool = True) -> int:
    """The exact size of a ``.weights`` file for ``net``: header, then per convolution its
    batch-norm (4 x filters) or bias (filters) floats and its kernel, float32."""
    total = 4 * HEADER_INT32 + (8 if seen_int64 else 4)
    for layer in net.layers:
        if isinstance(layer, nn.Sequential) and hasattr(layer, "conv"):
            conv = layer.conv
            total += 4 * (4 * conv.out_channels if hasattr(layer, "bn") else conv.out_channels)
            total += 4 * conv.weight.numel()
    return total


def load_darknet_weights(net: DarknetNet, path: str | os.PathLike) -> dict:
    """Load a Darknet ``.weights`` file into ``net``, strictly (every byte, none missing);
    returns its header."""
    data = Path(path).read_bytes()
    if len(data) < 4 * HEADER_INT32 + 4:
        raise ValueError(f"{path}: too short for a Darknet .weights file ({len(data)} bytes)")
    major, minor, revision = np.frombuffer(data, np.int32, HEADER_INT32).tolist()
    seen_int64 = major * 10 + minor >= 2 and major < 1000 and minor < 1000
    offset = 4 * HEADER_INT32
    seen = int(np.frombuffer(data, np.int64 if seen_int64 else np.int32, 1, offset)[0])
    offset += 8 if seen_int64 else 4
    expected = expected_weights_bytes(net, seen_int64)
    if len(data) != expected:
        raise ValueError(f"{path}: {len(data)} bytes, but this .cfg's layers need exactly {expected} "
                         "(another architecture or a truncated file)")
    floats = np.frombuffer(data, np.float32, (len(data) - offset) // 4, offset)
    position = 0

    def take(tensor: torch.Tensor) -> None:
        nonlocal position
        count = tensor.numel()
        tensor.data.copy_(torch.from_numpy(floats[position : position + count].copy()).view_as(tensor))
        position += count

    with torch.no_grad():
        for layer in net.layers:
            if isinstance(layer, nn.Sequential) and hasattr(layer, "conv"):
                if hasattr(layer, "bn"):
                    for t in (layer.bn.bias, layer.bn.weight, layer.bn.running_mean, layer.bn.running_var):
                        take(t)
                else:
                    take(layer.conv.bias)
                take(layer.conv.weight)
    return {"major": major, "minor": minor, "revision": revision, "seen": seen}


class DarknetYOLO(Detector):
    """A Darknet YOLOv3 network with letterboxing, decoding, NMS and YOLOv3's loss in torch."""

    family = "darknet"

    def __init__(self, name: str, net: DarknetNet, classes: list[str], native_classes: list[str],
                 conf: float = 0.001, max_det: int = 100, pseudo_threshold: float = 0.5) -> None:
        super().__init__(classes, pseudo_threshold=pseudo_threshold, native_classes=native_classes)
        self.name = name
        self.model = net
        self.conf, self.max_det = conf, max_det

    def canvas(self, height: int, width: int) -> tuple:
        """Every image is letterboxed on its own onto the [net] size."""
        return self.model.height, self.model.width

    def letterbox(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[float, float, float]]]:
        """Images -> [B, 3, net H, net W] and per image (scale, left, top)."""
        height, width = self.model.height, self.model.width
        batch, metas = [], []
        for img in images:
            img = img.to(self.device, torch.float32)
            h, w = img.shape[-2:]
            scale = min(width / w, height / h)
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            x = F.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False)
            left, top = (width - nw) // 2, (height - nh) // 2
            batch.append(F.pad(x, (left, width - nw - left, top, height - nh - top), value=LETTERBOX_GREY))
            metas.append((scale, left, top))
        return torch.cat(batch), metas

    def _decode(self, outputs) -> tuple[torch.Tensor, torch.Tensor]:
        """All predictions: boxes [B, N, 4] (xyxy, letterboxed pixels), class scores [B, N, C]."""
        boxes, scores = [], []
        for raw, layer, stride in outputs:
            b, a, h, w, _ = raw.shape
            ys, xs = torch.meshgrid(torch.arange(h, device=raw.device), torch.arange(w, device=raw.device),
                                    indexing="ij")
            cx = (raw[..., 0].sigmoid() + xs) * stride
            cy = (raw[..., 1].sigmoid() + ys) * stride
            bw = raw[..., 2].exp() * layer.anchors[:, 0].view(1, a, 1, 1)
            bh = raw[..., 3].exp() * layer.anchors[:, 1].view(1, a, 1, 1)
            box = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
            boxes.append(box.reshape(b, -1, 4))
            scores.append((raw[..., 4:5].sigmoid() * raw[..., 5:].sigmoid()).reshape(b, -1, layer.num_classes))
        return torch.cat(boxes, 1), torch.cat(scores, 1)

    def predict_raw(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        from torchvision.ops import batched_nms

        x, metas = self.letterbox(images)
        boxes, scores = self._decode(self.model(x))
        table = self.label_map.table_on("native_to_dataset", boxes.device)
        results = []
        for img, (scale, left, top), b, s in zip(images, metas, boxes, scores):
            keep_mappable = (table >= 0).to(s.dtype)
            s = s * keep_mappable  # only classes the dataset has
            index, native = (s > self.conf).nonzero(as_tuple=True)
            kept_boxes, kept_scores = b[index], s[index, native]
            keep = batched_nms(kept_boxes, kept_scores, native, NMS_IOU)[: self.max_det]
            out_boxes = (kept_boxes[keep] - torch.tensor([left, top, left, top], device=b.device)) / scale
            h, w = img.shape[-2:]
            out_boxes[:, 0::2] = out_boxes[:, 0::2].clamp(0, w)
            out_boxes[:, 1::2] = out_boxes[:, 1::2].clamp(0, h)
            results.append({"boxes": out_boxes, "scores": kept_scores[keep], "labels": table[native[keep]]})
        return results

    def loss_raw(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        from torchvision.ops import box_iou

        x, metas = self.letterbox(images)
        outputs = self.model(x)
        device = x.device
        anchors = torch.tensor(self.model.all_anchors, device=device)
        pred_boxes, _ = self._decode([(raw.detach(), layer, stride) for raw, layer, stride in outputs])
        total = x.new_zeros(())
        net_area = float(self.model.width * self.model.height)
        for i, ((scale, left, top), target) in enumerate(zip(metas, targets)):
            boxes = torch.as_tensor(target["boxes"], device=device, dtype=torch.float32).reshape(-1, 4)
            native = self.label_map.native_or_missing(torch.as_tensor(target["labels"], device=device))
            gt = boxes * scale + torch.tensor([left, top, left, top], device=device)
            valid = (native >= 0) & (gt[:, 2] > gt[:, 0]) & (gt[:, 3] > gt[:, 1])
            gt, native = gt[valid], native[valid]
            gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
            # best anchor by shape IoU (boxes and anchors centred together), over all layers
            inter = torch.minimum(gw[:, None], anchors[None, :, 0]) * torch.minimum(gh[:, None], anchors[None, :, 1])
            shape_iou = inter / (gw[:, None] * gh[:, None] + anchors[None, :, 0] * anchors[None, :, 1] - inter)
            best = shape_iou.argmax(1) if len(gt) else torch.zeros(0, dtype=torch.long, device=device)
            # no objectness penalty where a prediction already overlaps a ground truth enough
            overlap = box_iou(pred_boxes[i], gt).amax(1) if len(gt) else pred_boxes.new_zeros(len(pred_boxes[i]))
            start = 0
            for raw, layer, stride in outputs:
                _, a, h, w, _ = raw.shape
                r = raw[i]
                count = a * h * w
                obj_target = torch.zeros(a, h, w, device=device)
                obj_weight = (overlap[start : start + count].view(a, h, w) <= layer.ignore_thresh).float()
                start += count
                mask = torch.tensor(layer.mask, device=device)
                mine = (best[:, None] == mask[None]).any(1)
                if mine.any():
                    k = (best[mine][:, None] == mask[None]).float().argmax(1)
                    g, lab = gt[mine], native[mine]
                    cx, cy = (g[:, 0] + g[:, 2]) / 2 / stride, (g[:, 1] + g[:, 3]) / 2 / stride
                    col, row = cx.floor().clamp(0, w - 1).long(), cy.floor().clamp(0, h - 1).long()
                    p = r[k, row, col]  # [M, 5 + C]
                    bw, bh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
                    weight = 2 - bw * bh / net_area
                    xy = torch.stack([cx - col, cy - row], 1)
                    wh = torch.stack([torch.log(bw / layer.anchors[k, 0]), torch.log(bh / layer.anchors[k, 1])], 1)
                    total = total + (F.binary_cross_entropy_with_logits(p[:, :2], xy, reduction="none").sum(1)
                                     * weight).sum()
                    total = total + (0.5 * (p[:, 2:4] - wh).square().sum(1) * weight).sum()
                    cls_target = F.one_hot(lab, layer.num_classes).float()
                    total = total + F.binary_cross_entropy_with_logits(p[:, 5:], cls_target, reduction="sum")
                    obj_target[k, row, col] = 1.0
                    obj_weight[k, row, col] = 1.0
                total = total + (F.binary_cross_entropy_with_logits(r[..., 4], obj_target, reduction="none")
                                 * obj_weight).sum()
        return total / len(images)


def build_darknet(name: str, weights: str | os.PathLike, classes: list[str] | None = None,
                  num_classes: int | None = None, device: str | torch.device = "cpu",
                  conf: float = 0.001, pseudo_threshold: float = 0.5, cfg: str | os.PathLike | None = None,
                  **_: object) -> DarknetYOLO:
    """A Darknet YOLOv3 from ``weights`` (``.weights``) and its ``.cfg`` (default: beside it,
    same stem). Native classes: ``coco.names`` beside the weights, else COCO's when the
    ``.cfg`` has 80 classes, else ``class_i``."""
    from icm.data.classmaps import COCO_CLASSES

    weights = Path(weights)
    cfg = Path(cfg) if cfg is not None else weights.with_suffix(".cfg")
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: Darknet weights not found")
    if not cfg.is_file():
        raise FileNotFoundError(f"{cfg}: the Darknet .cfg of {weights.name} is not beside it (same stem)")
    net = DarknetNet(parse_cfg(cfg))
    load_darknet_weights(net, weights)
    names_file = weights.parent / "coco.names"
    if names_file.is_file():
        default_native = [n.strip() for n in names_file.read_text().splitlines() if n.strip()]
    elif net.num_classes == len(COCO_CLASSES):
        default_native = list(COCO_CLASSES)
    else:
        default_native = [f"class_{i}" for i in range(net.num_classes)]
    if len(default_native) != net.num_classes:
        raise ValueError(f"{names_file}: {len(default_native)} names for a {net.num_classes}-class head")
    if num_classes is not None and num_classes != net.num_classes:
        raise ValueError(f"{cfg}: a {net.num_classes}-class head, not {num_classes}")
    native, dataset = resolve_classes(classes, None, default_native)
    detector = DarknetYOLO(name, net, dataset, native, conf=conf, pseudo_threshold=pseudo_threshold)
    detector.build_kwargs = {"cfg": str(cfg)}
    return detector.to(device)


def is_darknet_weights(weights: object) -> bool:
    """Whether ``weights`` names a Darknet ``.weights`` file (routes yolov3 / yolov3-tiny here)."""
    return isinstance(weights, str | os.PathLike) and str(weights).endswith(".weights")


__all__ = ["DarknetNet", "DarknetYOLO", "build_darknet", "expected_weights_bytes", "is_darknet_weights",
           "load_darknet_weights", "parse_cfg"]
