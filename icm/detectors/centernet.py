"""CenterNet (Objects as Points, ctdet) with a ResNet-18 backbone: our own implementation of
the official design, loading the official checkpoints with strict key matching.

* Network (official key layout): torchvision ResNet-18 body (``conv1``, ``bn1``,
  ``layer1..4``, no ``fc``), an upsampling neck ``deconv_layers`` to output stride 4, and
  three heads ``hm`` (class heat maps), ``wh`` (box size) and ``reg`` (centre offset), each
  3x3 conv (``head_conv`` channels, bias) + ReLU + 1x1 conv; the ``hm`` bias starts at -2.19.

  - ``res_18`` (``msra_resnet``): three [4x4 transposed conv + BN + ReLU] of 256 channels.
  - ``resdcn_18`` (``resnet_dcn``): three [3x3 modulated deformable conv (DCNv2) + BN + ReLU
    + 4x4 transposed conv + BN + ReLU] of 256, 128, 64 channels; DCN runs through
    :func:`torchvision.ops.deform_conv2d`.

* Input: RGB [0, 1] -> BGR, ``(x - mean) / std`` with the official BGR mean/std, padded
  (bottom/right, black) up to a multiple of 32, all in torch so gradients reach the pixels.
* Training loss: penalty-reduced focal loss (alpha 2, beta 4) on the heat maps with
  gaussian targets (CornerNet radius at min overlap 0.7), plus L1 size (weight 0.1) and
  offset (weight 1) losses at the object centres.
* Decoding: sigmoid, 3x3 max-pool peak extraction, top-100 over the classes (those with a
  dataset class), boxes scaled by 4 back to the input image's pixels and clipped to it.
* ``toy_centernet``: the resdcn layout with plain 3x3 convs instead of DCN, on a
  quarter-width ResNet-18 (16..128 channels) with 64-channel neck and heads, plus skips
  (1x1 conv + BN of layer3, layer2, layer1 added after each upsampling, as in CenterNet's
  DLA up-path): 1.2 M parameters (2.3 MB fp16), for the CPU-trained toy world. Without the
  skips it learned about 20 times slower from scratch (val mAP@0.5 0.02 against 0.46 after
  200 steps at batch 32): its heat map had to be rebuilt from a 4x4 map at 128 px input.

Our choices where the official code has none or differs for a reason: targets are built on
continuous xyxy boxes clipped to the (padded) input rather than to ``output size - 1``;
the transposed convs start as per-channel bilinear upsampling; decoded sizes are clamped at
0 so an untrained network still gives valid boxes.

The official files (``ctdet_coco_resdcn18.pth``, ``ctdet_coco_resnet18.pth``) store
``{'epoch', 'state_dict'}``, sometimes with a ``module.`` prefix; they predict the 80 COCO
classes in contiguous order.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

from icm.data.classmaps import COCO_CLASSES, VOC_CLASSES
from icm.detectors.backbones import QUARTER_WIDTHS, resnet18_body
from icm.detectors.base import Detector, resolve_classes
from icm.detectors.registry import register
from icm.detectors.weights import (
    WeightsUnavailableError,
    is_weights_path,
    weights_unavailable,
)

OUTPUT_STRIDE = 4
INPUT_MULTIPLE = 32
MEAN_BGR = (0.408, 0.447, 0.470)
STD_BGR = (0.289, 0.274, 0.278)
HM_BIAS_INIT = -2.19
MAX_DETECTIONS = 100
SIZE_LOSS_WEIGHT = 0.1
OFFSET_LOSS_WEIGHT = 1.0
OFFICIAL_FILES = {"resdcn_18": "ctdet_coco_resdcn18.pth", "res_18": "ctdet_coco_resnet18.pth"}
# The official Pascal VOC models (07+12 trainval, 20 classes): file and fixed input size.
PASCAL_MODELS = {"centernet_pascal384": ("ctdet_pascal_resdcn18_384.pth", 384),
                 "centernet_pascal512": ("ctdet_pascal_resdcn18_512.pth", 512)}


# ----------------------------------------------------------------------------- network


class ModulatedDeformConv(nn.Module):
    """DCNv2 layer in the official ``DCN`` key layout: ``weight``, ``bias`` and
    ``conv_offset_mask`` (3 * k * k outputs: y/x offsets interleaved per kernel tap, then
    the mask logits), computed with :func:`torchvision.ops.deform_conv2d`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        bound = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)
        self.conv_offset_mask = nn.Conv2d(
            in_channels, 3 * kernel_size * kernel_size, kernel_size, padding=self.padding
        )
        # Start as a plain convolution: no offsets, mask sigmoid(0) = 0.5 everywhere.
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset_y_x_a, offset_y_x_b, mask = self.conv_offset_mask(x).chunk(3, dim=1)
        offset = torch.cat([offset_y_x_a, offset_y_x_b], dim=1)
        return deform_conv2d(
            x, offset, self.weight, self.bias, padding=self.padding, mask=mask.sigmoid()
        )


def _bilinear_upsampling_init(up: nn.ConvTranspose2d) -> None:
    """Initialise a stride-2 transposed conv as per-channel bilinear upsampling."""
    k = up.weight.shape[-1]
    f = math.ceil(k / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    taps = 1 - torch.abs(torch.arange(k, dtype=torch.float32) / f - c)
    kernel = taps[:, None] * taps[None, :]
    with torch.no_grad():
        up.weight.zero_()
        for ch in range(min(up.weight.shape[0], up.weight.shape[1])):
            up.weight[ch, ch] = kernel


def _upsample(channels: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1, bias=False)


def deconv_neck(in_channels: int, channels: tuple[int, ...]) -> nn.Sequential:
    """``res_18`` neck: [4x4 transposed conv + BN + ReLU] per stage (keys 0, 1, 3, 4, 6, 7)."""
    layers: list[nn.Module] = []
    for out_channels in channels:
        up = nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False)
        nn.init.normal_(up.weight, std=0.001)
        layers += [up, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
        in_channels = out_channels
    return nn.Sequential(*layers)


def conv_up_neck(in_channels: int, channels: tuple[int, ...], deformable: bool) -> nn.Sequential:
    """``resdcn_18`` neck: [3x3 DCN + BN + ReLU + 4x4 transposed conv + BN + ReLU] per
    stage; with ``deformable=False`` the DCN is an ordinary 3x3 conv (small variant)."""
    layers: list[nn.Module] = []
    for out_channels in channels:
        if deformable:
            conv: nn.Module = ModulatedDeformConv(in_channels, out_channels)
        else:
            conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        up = _upsample(out_channels)
        _bilinear_upsampling_init(up)
        layers += [conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
                   up, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
        in_channels = out_channels
    return nn.Sequential(*layers)


def _head(in_channels: int, head_conv: int, out_channels: int) -> nn.Sequential:
    head = nn.Sequential(
        nn.Conv2d(in_channels, head_conv, 3, padding=1, bias=True),
        nn.ReLU(inplace=True),
        nn.Conv2d(head_conv, out_channels, 1),
    )
    nn.init.normal_(head[0].weight, std=0.001)
    nn.init.zeros_(head[0].bias)
    nn.init.normal_(head[2].weight, std=0.001)
    nn.init.zeros_(head[2].bias)
    return head


class CenterNetNet(nn.Module):
    """ResNet-18 CenterNet network with the official (flat) state-dict layout.

    ``neck``: ``"deconv"`` (res_18), ``"dcn"`` (resdcn_18) or ``"conv"`` (the resdcn layout
    with plain 3x3 convs). ``widths``: the four ResNet stage widths (64..512 for ResNet-18).
    Returns raw head outputs ``{"hm": logits [B, C, H/4, W/4], "wh": [B, 2, ...], "reg": [B, 2, ...]}``.
    """

    def __init__(
        self,
        num_classes: int,
        neck: str = "dcn",
        widths: tuple[int, int, int, int] = (64, 128, 256, 512),
        neck_channels: tuple[int, int, int] = (256, 128, 64),
        head_conv: int = 64,
        skips: bool = False,
    ) -> None:
        super().__init__()
        for name, module in resnet18_body(widths).items():  # flat: the official key layout
            setattr(self, name, module)
        in_channels = widths[-1]

        if neck == "deconv":
            self.deconv_layers = deconv_neck(in_channels, neck_channels)
        elif neck in ("dcn", "conv"):
            self.deconv_layers = conv_up_neck(in_channels, neck_channels, deformable=neck == "dcn")
        else:
            raise ValueError(f"unknown CenterNet neck {neck!r} (deconv, dcn or conv)")
        # Skips: layer3, layer2 and layer1 features (1x1 conv + BN) added after each of the
        # three upsamplings, as in CenterNet's DLA up-path; not in the ResNet layouts.
        self.skips = None
        if skips:
            self.skips = nn.ModuleList(
                nn.Sequential(nn.Conv2d(width, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
                for width, out_channels in zip(widths[2::-1], neck_channels, strict=True)
            )
        self.hm = _head(neck_channels[-1], head_conv, num_classes)
        self.wh = _head(neck_channels[-1], head_conv, 2)
        self.reg = _head(neck_channels[-1], head_conv, 2)
        nn.init.constant_(self.hm[2].bias, HM_BIAS_INIT)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        if self.skips is None:
            x = self.deconv_layers(self.layer4(self.layer3(self.layer2(self.layer1(x)))))
        else:
            features = []
            for layer in (self.layer1, self.layer2, self.layer3):
                x = layer(x)
                features.append(x)
            x = self.layer4(x)
            stage_length = len(self.deconv_layers) // len(self.skips)
            for i, (skip, feature) in enumerate(zip(self.skips, reversed(features), strict=True)):
                x = self.deconv_layers[i * stage_length : (i + 1) * stage_length](x) + skip(feature)
        return {"hm": self.hm(x), "wh": self.wh(x), "reg": self.reg(x)}


# ----------------------------------------------------------------------------- targets and loss


def gaussian_radius(height, width, min_overlap: float = 0.7):
    """CornerNet's gaussian radius for a box of ``height`` x ``width`` (output pixels), as the
    official CenterNet computes it: the smallest of three quadratic roots (corners moved
    together inside, outside, or one in and one out), each taken as ``(b + sqrt(disc)) / 2``.
    Numbers give a float; tensors give a tensor of radii, element-wise."""
    sqrt, minimum = (torch.sqrt, torch.minimum) if isinstance(height, torch.Tensor) else (math.sqrt, min)
    area = height * width
    roots = []
    for a, b, c in (
        (1.0, height + width, area * (1 - min_overlap) / (1 + min_overlap)),
        (4.0, 2 * (height + width), (1 - min_overlap) * area),
        (4.0 * min_overlap, -2 * min_overlap * (height + width), (min_overlap - 1) * area),
    ):
        roots.append((b + sqrt(b * b - 4 * a * c)) / 2)
    return minimum(minimum(roots[0], roots[1]), roots[2])


def encode_targets(
    boxes: torch.Tensor, labels: torch.Tensor, num_classes: int, out_height: int, out_width: int
) -> dict[str, torch.Tensor]:
    """Ground truth of one image -> CenterNet training targets at output stride 4, on the
    boxes' device, without a host synchronisation (stage one encodes at every gradient).

    ``boxes`` [N, 4] xyxy input pixels, ``labels`` [N] native class indices (-1: no native
    class). Boxes are clipped to the output map. Returns ``heatmap`` [C, h, w] (per class,
    the maximum of a gaussian of CornerNet's radius r around each object's integer centre,
    sigma (2r + 1) / 6, peak 1, zero outside the (2r + 1)^2 window), and per object
    ``index`` [N] (flat ``y * w + x`` of the integer centre), ``size`` [N, 2] (w, h in
    output pixels), ``offset`` [N, 2] (centre minus integer centre) and ``weight`` [N]
    (0 for an empty box or a label without a native class, which add nothing, else 1).
    """
    device = boxes.device
    boxes = boxes.detach().float().reshape(-1, 4) / OUTPUT_STRIDE
    labels = torch.as_tensor(labels, device=device).long().reshape(-1)
    x1, x2 = boxes[:, 0].clamp(0, out_width), boxes[:, 2].clamp(0, out_width)
    y1, y2 = boxes[:, 1].clamp(0, out_height), boxes[:, 3].clamp(0, out_height)
    w, h = x2 - x1, y2 - y1
    weight = ((w > 0) & (h > 0) & (labels >= 0) & (labels < num_classes)).float()
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    ix, iy = cx.floor().clamp(max=out_width - 1), cy.floor().clamp(max=out_height - 1)
    radius = gaussian_radius(h.ceil(), w.ceil()).nan_to_num(0.0).floor().clamp(min=0)  # nan: empty box
    two_sigma_sq = 2 * ((2 * radius + 1) / 6) ** 2
    dx = torch.arange(out_width, device=device, dtype=torch.float32)[None, :] - ix[:, None]  # [N, w]
    dy = torch.arange(out_height, device=device, dtype=torch.float32)[None, :] - iy[:, None]  # [N, h]
    gx = torch.where(dx.abs() <= radius[:, None], -(dx**2), -math.inf)
    gy = torch.where(dy.abs() <= radius[:, None], -(dy**2), -math.inf)
    gauss = torch.exp((gy[:, :, None] + gx[:, None, :]) / two_sigma_sq[:, None, None])  # [N, h, w]
    gauss = torch.where(gauss < torch.finfo(torch.float32).eps, 0.0, gauss) * weight[:, None, None]
    flat = gauss.reshape(len(boxes), out_height * out_width)
    heatmap = torch.zeros(num_classes, out_height * out_width, device=device)
    heatmap.scatter_reduce_(0, labels.clamp(0, num_classes - 1)[:, None].expand_as(flat), flat, "amax")
    return {
        "heatmap": heatmap.reshape(num_classes, out_height, out_width),
        "index": (iy * out_width + ix).long() * weight.long(),
        "size": torch.stack([w, h], 1),
        "offset": torch.stack([cx - ix, cy - iy], 1),
        "weight": weight,
    }


def focal_loss(pred: torch.Tensor, gt: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CornerNet's penalty-reduced pixel-wise focal loss, normalised by the number of peaks.

    ``pred``: probabilities (sigmoid, clamped away from 0 and 1); ``gt``: gaussian heat
    maps with exact 1 at object centres.
    """
    pos = gt.eq(1).float()
    neg = 1 - pos
    pos_loss = (torch.log(pred) * (1 - pred).pow(alpha) * pos).sum()
    neg_loss = (torch.log(1 - pred) * pred.pow(alpha) * (1 - gt).pow(beta) * neg).sum()
    # No positives: the negative term alone (pos_loss is 0), not normalised; no host sync.
    return -(pos_loss + neg_loss) / pos.sum().clamp(min=1)


def centernet_loss(outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Focal heat-map loss + 0.1 * L1 size + 1 * L1 offset, for a batch of encoded targets."""
    hm = outputs["hm"].sigmoid().clamp(1e-4, 1 - 1e-4)
    gt = torch.stack([t["heatmap"] for t in targets]).to(hm)
    loss = focal_loss(hm, gt)
    batch, _, height, width = hm.shape
    flat_index = torch.cat([t["index"] + b * height * width for b, t in enumerate(targets)]).to(hm.device)
    if flat_index.numel():
        def gather(x: torch.Tensor) -> torch.Tensor:  # [B, 2, h, w] -> [N, 2] at the centres
            return x.permute(0, 2, 3, 1).reshape(batch * height * width, -1)[flat_index]

        size = torch.cat([t["size"] for t in targets]).to(hm)
        offset = torch.cat([t["offset"] for t in targets]).to(hm)
        weight = torch.cat([t["weight"] for t in targets]).to(hm)[:, None]
        # The official RegL1Loss: summed L1 over the centres / (number of regressed values).
        denom = 2 * weight.sum() + 1e-4
        loss = loss + SIZE_LOSS_WEIGHT * ((gather(outputs["wh"]) - size).abs() * weight).sum() / denom
        loss = loss + OFFSET_LOSS_WEIGHT * ((gather(outputs["reg"]) - offset).abs() * weight).sum() / denom
    else:
        loss = loss + 0 * (outputs["wh"].sum() + outputs["reg"].sum())
    return loss


# ----------------------------------------------------------------------------- decoding


def decode_detections(
    heat: torch.Tensor, wh: torch.Tensor, reg: torch.Tensor, k: int = MAX_DETECTIONS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Peaks of ``heat`` (probabilities [B, C, h, w]) -> top-``k`` boxes [B, k, 4] (xyxy,
    output-map pixels), scores [B, k] and native labels [B, k]. Negative sizes (an
    untrained network's) are clamped to 0 so that x2 >= x1 and y2 >= y1."""
    batch, num_classes, height, width = heat.shape
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    k = min(k, num_classes * height * width)
    scores, flat = peaks.reshape(batch, -1).topk(k)
    labels = flat // (height * width)
    pixel = flat % (height * width)
    ys, xs = (pixel // width).float(), (pixel % width).float()

    def at_peaks(x: torch.Tensor) -> torch.Tensor:  # [B, 2, h, w] -> [B, k, 2]
        return x.reshape(batch, 2, -1).gather(2, pixel[:, None, :].expand(-1, 2, -1)).transpose(1, 2)

    size, offset = at_peaks(wh).clamp(min=0), at_peaks(reg)  # a negative size is no box
    cx, cy = xs + offset[..., 0], ys + offset[..., 1]
    half_w, half_h = size[..., 0] / 2, size[..., 1] / 2
    boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)
    return boxes, scores, labels


# ----------------------------------------------------------------------------- the detector


def strip_module_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the ``module.`` prefix DataParallel checkpoints carry."""
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state_dict.items()}


def load_official_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an official CenterNet checkpoint (``{'epoch', 'state_dict'}`` or a bare state
    dict) with ``weights_only=True``; returns the state dict without ``module.`` prefixes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CenterNet checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ValueError(f"{path}: not a loadable CenterNet checkpoint ({e})") from e
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path}: no state_dict in CenterNet checkpoint")
    return strip_module_prefix(state_dict)


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[:2])


class CenterNet(Detector):
    """CenterNet behind the :class:`Detector` interface.

    ``native_classes`` are the classes the heat map predicts; ``classes`` the dataset's.
    Predictions are mapped native -> dataset by name (natives without a dataset class are
    left out of the top-k); ground-truth labels dataset -> native (unmatched boxes dropped).
    """

    family = "centernet"

    def __init__(
        self,
        classes: list[str],
        native_classes: list[str] | None = None,
        arch: str = "resdcn_18",
        pseudo_threshold: float = 0.3,
        max_detections: int = MAX_DETECTIONS,
        input_size: int | None = None,
    ) -> None:
        super().__init__(classes, pseudo_threshold=pseudo_threshold, native_classes=native_classes)
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown CenterNet architecture {arch!r} ({', '.join(ARCHITECTURES)})")
        if input_size is not None and input_size % INPUT_MULTIPLE:
            raise ValueError(f"input_size must be a multiple of {INPUT_MULTIPLE}, got {input_size}")
        self.arch = arch
        self.max_detections = max_detections
        # None: each image at its own resolution (the COCO models' test setting); N: every
        # image scaled to fit N x N and centred on black (the Pascal VOC models' --fix_res).
        self.input_size = input_size
        self.build_kwargs = {"max_detections": max_detections, "input_size": input_size}
        self.model = CenterNetNet(len(self.native_classes), **ARCHITECTURES[arch])
        self.register_buffer("mean_bgr", torch.tensor(MEAN_BGR).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std_bgr", torch.tensor(STD_BGR).view(1, 3, 1, 1), persistent=False)

    def load_official(self, path: str | os.PathLike) -> CenterNet:
        """Load an official ctdet checkpoint with strict key matching. When this detector's
        head has another number of classes than the file (fine-tuning to a new label set),
        the final ``hm`` layer keeps its initialisation and every other key must match."""
        state_dict = load_official_state_dict(path)
        own = self.model.state_dict()
        new_head = [k for k in ("hm.2.weight", "hm.2.bias")
                    if k in state_dict and state_dict[k].shape != own[k].shape]
        for k in new_head:
            del state_dict[k]
        try:
            result = self.model.load_state_dict(state_dict, strict=False)
        except RuntimeError as e:  # same keys, other shapes
            raise ValueError(f"{path}: does not match the CenterNet {self.arch} layout ({_first_line(e)})") from e
        problems = [k for k in result.missing_keys if k not in new_head] + list(result.unexpected_keys)
        if problems:
            raise ValueError(f"{path}: does not match the CenterNet {self.arch} layout (keys: {problems[:4]})")
        return self

    def canvas(self, height: int, width: int) -> tuple:
        """The fixed input square, or the size padded to a multiple of 32: equal ones are
        prepared alike."""
        if self.input_size:
            return self.input_size, self.input_size
        return -(-height // INPUT_MULTIPLE) * INPUT_MULTIPLE, -(-width // INPUT_MULTIPLE) * INPUT_MULTIPLE

    def preprocess(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[float, int, int]]]:
        """RGB [0, 1] images -> one BGR-normalised batch and, per image, (scale, left, top) of
        its placement: at its own size padded bottom/right with black to a common multiple of
        32, or (``input_size``) scaled bilinearly to fit the square and centred on black."""
        if self.input_size:
            size, placed, metas = self.input_size, [], []
            for img in images:
                h, w = img.shape[-2:]
                scale = size / max(h, w)
                nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
                x = F.interpolate(img[None].float(), size=(nh, nw), mode="bilinear", align_corners=False)[0]
                left, top = (size - nw) // 2, (size - nh) // 2
                placed.append(F.pad(x, (left, size - nw - left, top, size - nh - top)))
                metas.append((scale, left, top))
        else:
            height = -(-max(img.shape[-2] for img in images) // INPUT_MULTIPLE) * INPUT_MULTIPLE
            width = -(-max(img.shape[-1] for img in images) // INPUT_MULTIPLE) * INPUT_MULTIPLE
            placed = [F.pad(img, (0, width - img.shape[-1], 0, height - img.shape[-2])) for img in images]
            metas = [(1.0, 0, 0)] * len(images)
        batch = torch.stack(placed).to(self.mean_bgr.device, torch.float32)
        return (batch.flip(1) - self.mean_bgr) / self.std_bgr, metas

    def predict_raw(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        native_to_dataset = self.label_map.table_on("native_to_dataset", self.mean_bgr.device)
        has_dataset_class = (native_to_dataset >= 0).float().view(1, -1, 1, 1)
        results: list[dict[str, torch.Tensor]] = [{} for _ in images]
        # Images on one canvas share a forward pass (all of them at a fixed input size; else
        # those of one size, each at its own resolution as at official COCO test time).
        by_canvas: dict[tuple, list[int]] = {}
        for i, img in enumerate(images):
            by_canvas.setdefault(self.canvas(*img.shape[-2:]), []).append(i)
        for indices in by_canvas.values():
            batch, metas = self.preprocess([images[i] for i in indices])
            outputs = self.model(batch)
            heat = outputs["hm"].sigmoid() * has_dataset_class  # top-k among mappable classes
            boxes, scores, labels = decode_detections(heat, outputs["wh"], outputs["reg"], self.max_detections)
            labels = native_to_dataset[labels]
            for j, i in enumerate(indices):
                scale, left, top = metas[j]
                height, width = images[i].shape[-2:]
                box = (boxes[j] * OUTPUT_STRIDE - boxes.new_tensor([left, top, left, top])) / scale
                box[:, 0::2] = box[:, 0::2].clamp(0, width)
                box[:, 1::2] = box[:, 1::2].clamp(0, height)
                keep = labels[j] >= 0
                results[i] = {"boxes": box[keep], "scores": scores[j][keep], "labels": labels[j][keep]}
        return results

    def loss_raw(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        batch, metas = self.preprocess(images)
        outputs = self.model(batch)
        _, num_classes, out_height, out_width = outputs["hm"].shape
        device = outputs["hm"].device
        encoded = []
        for t, (scale, left, top) in zip(targets, metas):  # on the device: labels without a native class weigh 0
            native = self.label_map.native_or_missing(torch.as_tensor(t["labels"], device=device))
            boxes = torch.as_tensor(t["boxes"], device=device, dtype=torch.float32).reshape(-1, 4) * scale
            if left or top:  # Python scalars: no host-to-device copy
                boxes = torch.stack([boxes[:, 0] + left, boxes[:, 1] + top, boxes[:, 2] + left, boxes[:, 3] + top], 1)
            encoded.append(encode_targets(boxes, native, num_classes, out_height, out_width))
        return centernet_loss(outputs, encoded)


# ----------------------------------------------------------------------------- builders

ARCHITECTURES: dict[str, dict] = {
    "resdcn_18": {"neck": "dcn", "neck_channels": (256, 128, 64)},
    "res_18": {"neck": "deconv", "neck_channels": (256, 256, 256)},
    # 1.17 M parameters (2.3 MB fp16): quarter-width ResNet-18 + the resdcn neck with plain
    # convs + skips from the backbone.
    "small": {"neck": "conv", "widths": QUARTER_WIDTHS, "neck_channels": (64, 64, 64), "head_conv": 64,
              "skips": True},
}
MODEL_ZOO_URL = "https://github.com/xingyizhou/CenterNet/blob/master/readme/MODEL_ZOO.md"


def build_centernet(
    arch: str,
    registered_name: str,
    classes: list[str] | None = None,
    num_classes: int | None = None,
    weights: str | os.PathLike | None = "default",
    device: str | torch.device = "cpu",
    **kwargs,
) -> CenterNet:
    """Build a CenterNet of architecture ``arch`` (``resdcn_18``, ``res_18``, ``small``).

    ``weights``: ``"default"`` (the official COCO file; no library downloads it, so it must
    be in torch hub's ``checkpoints`` folder), a path to an official ctdet checkpoint, or None (random initialisation; ``small`` has no default
    weights). Classes follow
    :func:`~icm.detectors.base.resolve_classes`: the ResNet-18 models predict the 80 COCO
    classes natively unless ``num_classes`` gives the head its own classes; ``small`` has
    no default class set.
    """
    # Our own checkpoints never get here: icm.detectors.build_detector rebuilds them for
    # every family. A path here is an official ctdet checkpoint.
    default_native = None if arch == "small" else (VOC_CLASSES if registered_name in PASCAL_MODELS else COCO_CLASSES)
    native, classes = resolve_classes(classes, num_classes, default_native)
    if registered_name in PASCAL_MODELS:
        kwargs.setdefault("input_size", PASCAL_MODELS[registered_name][1])
    detector = CenterNet(classes, native_classes=native, arch=arch, **kwargs)
    if weights == "default" and arch == "small":
        raise WeightsUnavailableError(
            f"{registered_name}: no default weights (a toy detector, trained by scripts/train_detector.py); "
            f"pass --weights {registered_name}=PATH, or weights=None to start from random weights"
        )
    if weights == "default":
        filename = PASCAL_MODELS[registered_name][0] if registered_name in PASCAL_MODELS else OFFICIAL_FILES[arch]
        weights = Path(torch.hub.get_dir()) / "checkpoints" / filename
        if not weights.is_file():
            raise weights_unavailable(
                registered_name, filename, MODEL_ZOO_URL, f"no library downloads it, not in {weights.parent}"
            )
    if is_weights_path(weights):
        detector.load_official(weights)
    detector.name = registered_name
    return detector.to(device)


@register("centernet")
def build_centernet_resdcn18(**kwargs) -> CenterNet:
    """CenterNet ResDCN-18 (official ``ctdet_coco_resdcn18.pth`` layout), COCO classes."""
    return build_centernet("resdcn_18", "centernet", **kwargs)


@register("centernet_res18")
def build_centernet_res18(**kwargs) -> CenterNet:
    """CenterNet ResNet-18 with the plain transposed-conv neck (official ``res_18`` layout)."""
    return build_centernet("res_18", "centernet_res18", **kwargs)


@register("centernet_pascal384")
def build_centernet_pascal384(**kwargs) -> CenterNet:
    """CenterNet ResDCN-18 trained on Pascal VOC 07+12 (official ``ctdet_pascal_resdcn18_384.pth``,
    20-class head), run as trained: each image scaled to fit 384 x 384, centred on black."""
    return build_centernet("resdcn_18", "centernet_pascal384", **kwargs)


@register("centernet_pascal512")
def build_centernet_pascal512(**kwargs) -> CenterNet:
    """CenterNet ResDCN-18 trained on Pascal VOC 07+12 (official ``ctdet_pascal_resdcn18_512.pth``),
    at 512 x 512."""
    return build_centernet("resdcn_18", "centernet_pascal512", **kwargs)


@register("toy_centernet")
def build_toy_centernet(**kwargs) -> CenterNet:
    """Small CenterNet for the toy world (1.2 M parameters, trains on CPU); needs ``classes``."""
    return build_centernet("small", "toy_centernet", **kwargs)


__all__ = [
    "CenterNet",
    "CenterNetNet",
    "centernet_loss",
    "decode_detections",
    "encode_targets",
    "focal_loss",
    "gaussian_radius",
    "load_official_state_dict",
]
