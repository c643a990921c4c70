"""torchvision detectors (Faster R-CNN v1/v2, Mask R-CNN, RetinaNet, FCOS, SSD300, SSDlite)
behind :class:`Detector`.

Images go to the model as a list; its ``GeneralizedRCNNTransform`` normalises, resizes
(``F.interpolate``) and batches them in torch, so gradients reach the pixels, and maps boxes
back to the input size. Native labels are the model's: COCO category ids 1..90 for zoo
weights (translated to the 80 COCO names, then to the dataset's classes), 1..K for a head of
K own classes (0 is background).

Loss while frozen: torchvision computes losses only in train mode, so the model is put in
train mode with every BatchNorm (and Dropout) kept in eval; FrozenBatchNorm has no mode. The
two-stage models sample RPN anchors and RoI proposals at random (``samples_in_loss``): the
loss forks the RNG and seeds it with the call's ``seed``, else ``loss_seed`` (default 0), so
the same input and seed give the same loss, whatever the global seed; ``loss_seed=None``
uses the global RNG. Stage one passes a fresh seed at every gradient evaluation. Mask R-CNN's loss uses its mask branch
only when targets carry ``masks``. Trainable (``set_trainable(True)``), the loss is the
model's own training loss with BatchNorm in train mode.

Zoo weights (``weights="default"``: torchvision's own download and cache) load into the
architecture built with ``weights=None``; BatchNorm layers that the library would build as
FrozenBatchNorm2d (those without ``num_batches_tracked`` in the state dict) become
FrozenBatchNorm2d, and the legacy COCO_V1 weights get torchvision's ``eps=0`` fix, so the
model equals the library's (checked in tests/test_detectors_torchvision.py).

Toy architectures (own classes, 128 px): ``toy_faster_rcnn`` and ``toy_retinanet``
(MobileNetV3-small + 64-channel FPN, anchors of 8-128 px), ``toy_fcos`` (ShuffleNetV2 x0.5 +
64-channel FPN: a body family no seen toy detector uses) and ``toy_ssdlite`` (SSDlite at half
width with the reduced tail, input 128x128).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from icm.detectors.base import Detector, eval_mode, resolve_classes
from icm.detectors.registry import register
from icm.detectors.weights import is_weights_path, weights_unavailable

_NO_CLASS = ("__background__", "N/A")


@dataclass(frozen=True)
class TorchvisionSpec:
    """A registered name: torchvision builder name (zoo) or toy builder, and input size."""

    builder: str  # torchvision.models builder name, or a key of TOY_BUILDERS
    toy: bool = False
    fixed_size: bool = False  # SSD family: a fixed square input instead of min/max size
    legacy_eps: bool = False  # COCO_V1 weights torchvision loads with FrozenBatchNorm eps=0


SPECS: dict[str, TorchvisionSpec] = {
    "faster_rcnn": TorchvisionSpec("fasterrcnn_resnet50_fpn", legacy_eps=True),
    "faster_rcnn_v2": TorchvisionSpec("fasterrcnn_resnet50_fpn_v2"),
    "mask_rcnn": TorchvisionSpec("maskrcnn_resnet50_fpn", legacy_eps=True),
    "retinanet": TorchvisionSpec("retinanet_resnet50_fpn", legacy_eps=True),
    "fcos": TorchvisionSpec("fcos_resnet50_fpn"),
    "ssd300": TorchvisionSpec("ssd300_vgg16", fixed_size=True),
    "ssdlite": TorchvisionSpec("ssdlite320_mobilenet_v3_large", fixed_size=True),
    "toy_faster_rcnn": TorchvisionSpec("faster_rcnn", toy=True),
    "toy_mask_rcnn": TorchvisionSpec("mask_rcnn", toy=True),  # the unseen task: instance segmentation
    "toy_retinanet": TorchvisionSpec("retinanet", toy=True),
    "toy_fcos": TorchvisionSpec("fcos", toy=True),
    "toy_ssdlite": TorchvisionSpec("ssdlite", toy=True, fixed_size=True),
}


# ----------------------------------------------------------------------------- toy networks

TOY_SIZE = 128
TOY_FPN_CHANNELS = 64


def _mobilenet_fpn(extra_blocks: nn.Module) -> nn.Module:
    """MobileNetV3-small (BatchNorm, random init) with a 64-channel FPN on strides 8, 16, 32."""
    from torchvision.models import mobilenet_v3_small
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    features = mobilenet_v3_small(weights=None).features
    # Last layer of each stride: 3 (24 ch, /8), 8 (48 ch, /16), 12 (576 ch, /32).
    return BackboneWithFPN(
        features, {"3": "0", "8": "1", "12": "2"}, [24, 48, 576], TOY_FPN_CHANNELS, extra_blocks=extra_blocks
    )


def _shufflenet_fpn(extra_blocks: nn.Module) -> nn.Module:
    """ShuffleNetV2 x0.5 (random init) with a 64-channel FPN on strides 8, 16, 32: a body
    family that no seen toy detector uses."""
    from collections import OrderedDict

    from torchvision.models import shufflenet_v2_x0_5
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    net = shufflenet_v2_x0_5(weights=None)
    body = nn.Sequential(OrderedDict(
        (name, getattr(net, name)) for name in ("conv1", "maxpool", "stage2", "stage3", "stage4")
    ))
    return BackboneWithFPN(body, {"stage2": "0", "stage3": "1", "stage4": "2"}, [48, 96, 192], TOY_FPN_CHANNELS,
                           extra_blocks=extra_blocks)


def _toy_faster_rcnn(num_classes: int, masks: bool = False, **kwargs) -> nn.Module:
    """The toy Faster R-CNN (MobileNetV3-small FPN); with ``masks`` the toy Mask R-CNN: the
    same heads on the ShuffleNetV2 FPN (a family no seen detector uses) plus a small mask
    head (two 64-channel convs on 14 x 14 RoI features)."""
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    anchors = AnchorGenerator(sizes=((12,), (24,), (48,), (96,)), aspect_ratios=((0.5, 1.0, 2.0),) * 4)
    options = {
        "min_size": TOY_SIZE, "max_size": 2 * TOY_SIZE,
        "rpn_pre_nms_top_n_train": 600, "rpn_pre_nms_top_n_test": 300,
        "rpn_post_nms_top_n_train": 300, "rpn_post_nms_top_n_test": 150,
        "box_batch_size_per_image": 128,
        **kwargs,
    }
    parts = {
        "num_classes": None,  # a custom box_predictor
        "rpn_anchor_generator": anchors,
        "box_roi_pool": MultiScaleRoIAlign(["0", "1", "2"], output_size=7, sampling_ratio=2),
        "box_head": TwoMLPHead(TOY_FPN_CHANNELS * 7 * 7, 256),
        "box_predictor": FastRCNNPredictor(256, num_classes),
    }
    if not masks:
        return FasterRCNN(_mobilenet_fpn(LastLevelMaxPool()), **parts, **options)
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    return MaskRCNN(
        _shufflenet_fpn(LastLevelMaxPool()), **parts,
        mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(TOY_FPN_CHANNELS, [64, 64], 1),
        mask_predictor=MaskRCNNPredictor(64, 64, num_classes),
        **options,
    )


def _toy_mask_rcnn(num_classes: int, **kwargs) -> nn.Module:
    return _toy_faster_rcnn(num_classes, masks=True, **kwargs)


def _five_level_anchor_sizes(scales: tuple[float, ...]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(round(base * s) for s in scales) for base in (8, 16, 32, 64, 128))


def _toy_retinanet(num_classes: int, **kwargs) -> nn.Module:
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.retinanet import RetinaNetHead
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    anchors = AnchorGenerator(_five_level_anchor_sizes((1.0, 2 ** (1 / 3), 2 ** (2 / 3))), ((0.5, 1.0, 2.0),) * 5)
    head = RetinaNetHead(TOY_FPN_CHANNELS, 9, num_classes, norm_layer=partial(nn.GroupNorm, 16))
    options = {"min_size": TOY_SIZE, "max_size": 2 * TOY_SIZE, **kwargs}
    # Not shipped: it plateaued at val mAP@0.5 0.43 after 5300 steps (boxes right, every class
    # at about 0.3 on each); on a quarter-width ResNet-18 it learned slower still.
    backbone = _mobilenet_fpn(LastLevelP6P7(TOY_FPN_CHANNELS, TOY_FPN_CHANNELS))
    return RetinaNet(backbone, num_classes, anchor_generator=anchors, head=head, **options)


def _toy_fcos(num_classes: int, **kwargs) -> nn.Module:
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    anchors = AnchorGenerator(_five_level_anchor_sizes((1.0,)), ((1.0,),) * 5)
    options = {"min_size": TOY_SIZE, "max_size": 2 * TOY_SIZE, **kwargs}
    backbone = _shufflenet_fpn(LastLevelP6P7(TOY_FPN_CHANNELS, TOY_FPN_CHANNELS))
    return FCOS(backbone, num_classes, anchor_generator=anchors, **options)


def _toy_ssdlite(num_classes: int, **kwargs) -> nn.Module:
    """SSDlite320 at half width (MobileNetV3-large ``width_mult=0.5``: 2 MB in fp16, against
    4.6 MB at full width) on 128 px inputs. Its default boxes (0.2-0.95 of the image) suit the
    toy shapes: 78% of the toy val boxes have one of IoU >= 0.5; scales of 0.1-0.6 give 43%,
    as the finest map is only 8x8."""
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    model = ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=num_classes, width_mult=0.5, **kwargs
    )
    _set_fixed_size(model, TOY_SIZE)
    return model


# torchvision's MobileNetV3 BatchNorm uses momentum 0.01 (0.03 in SSDlite's head), tuned for
# ImageNet-length schedules: after a few hundred toy steps the running statistics are still
# far from the batch ones and eval-mode scores collapse (~1e-10). Toy models train briefly.
TOY_BN_MOMENTUM = 0.1


def _set_batchnorm_momentum(model: nn.Module, momentum: float) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


TOY_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "faster_rcnn": _toy_faster_rcnn,
    "mask_rcnn": _toy_mask_rcnn,
    "retinanet": _toy_retinanet,
    "fcos": _toy_fcos,
    "ssdlite": _toy_ssdlite,
}


def _set_fixed_size(model: nn.Module, size: int) -> None:
    """Make an SSD-style model resize every input to ``size`` x ``size`` (anchors are relative)."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    t = model.transform
    model.transform = GeneralizedRCNNTransform(
        size, size, t.image_mean, t.image_std, size_divisible=1, fixed_size=(size, size)
    )


# ----------------------------------------------------------------------------- zoo weights


def _zoo_weights_enum(spec: TorchvisionSpec):
    from torchvision.models import get_model_weights

    return get_model_weights(spec.builder).DEFAULT


def _coco_classes(spec: TorchvisionSpec) -> tuple[list[str], list[int]]:
    """COCO class names of the zoo weights and their category ids (from the weights' meta)."""
    categories = _zoo_weights_enum(spec).meta["categories"]
    ids = [i for i, c in enumerate(categories) if c not in _NO_CLASS]
    return [categories[i] for i in ids], ids


def _zoo_state_dict(name: str, spec: TorchvisionSpec, weights: str | Path) -> dict[str, torch.Tensor]:
    if weights == "default":
        enum = _zoo_weights_enum(spec)
        try:
            return enum.get_state_dict(progress=False, check_hash=True, weights_only=True)
        except (OSError, RuntimeError) as e:  # URLError is an OSError
            raise weights_unavailable(name, Path(enum.url).name, enum.url, e) from e
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        # torchvision's reference train.py stores its argparse Namespace beside the weights
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"{path}: not a torchvision state dict ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # torchvision reference-script checkpoint
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a torchvision state dict")
    return state


def _freeze_norms_as_in(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Turn BatchNorm2d layers the library builds as FrozenBatchNorm2d (their state has no
    ``num_batches_tracked``) into FrozenBatchNorm2d, as torchvision does for zoo weights."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.BatchNorm2d):
            continue
        if f"{name}.running_mean" in state and f"{name}.num_batches_tracked" not in state:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, FrozenBatchNorm2d(module.num_features, eps=module.eps))


def _load_zoo_state(name: str, model: nn.Module, spec: TorchvisionSpec, state: dict, same_head: bool) -> None:
    from torchvision.models.detection._utils import overwrite_eps

    _freeze_norms_as_in(model, state)
    if spec.legacy_eps:
        overwrite_eps(model, 0.0)
    if same_head:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(
                f"{name}: the weights do not fit its COCO architecture ({str(e).splitlines()[0]}); "
                "for a head of other classes pass num_classes and classes"
            ) from e
        return
    # Fine-tuning on other classes: everything but the class-dependent layers transfers.
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)


# ----------------------------------------------------------------------------- detector


@contextlib.contextmanager
def _loss_mode(model: nn.Module, seed: int | None) -> Iterator[None]:
    """Train mode (so torchvision returns losses) with BatchNorm and Dropout in eval, and a
    forked, seeded RNG for the proposal sampling."""
    was_training = model.training
    model.train()
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
            m.eval()
    devices = [p.device for p in model.parameters()][:1]
    cuda_devices = [d for d in devices if d.type == "cuda"]
    try:
        with torch.random.fork_rng(devices=cuda_devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _without_mask_branch(model: nn.Module, active: bool) -> Iterator[None]:
    roi_heads = getattr(model, "roi_heads", None)
    if not active or roi_heads is None or not roi_heads.has_mask():
        yield
        return
    pool = roi_heads.mask_roi_pool
    roi_heads.mask_roi_pool = None
    try:
        yield
    finally:
        roi_heads.mask_roi_pool = pool


class TorchvisionDetector(Detector):
    """A torchvision detection model with label translation and a frozen-BN loss."""

    family = "torchvision"

    def __init__(
        self,
        name: str,
        model: nn.Module,
        classes: list[str],
        native_classes: list[str],
        native_label_ids: list[int],
        loss_seed: int | None = 0,
        pseudo_threshold: float = 0.3,
    ) -> None:
        super().__init__(classes, pseudo_threshold=pseudo_threshold, native_classes=native_classes)
        self.name = name
        self.model = model
        self.loss_seed = loss_seed
        self.samples_in_loss = hasattr(model, "rpn")  # the two-stage (GeneralizedRCNN) models
        # model label id -> native class index (-1: background / unused id), and back.
        ids = torch.as_tensor(native_label_ids, dtype=torch.long)
        self.label_id_to_native = torch.full((int(ids.max()) + 1,), -1, dtype=torch.long)
        self.label_id_to_native[ids] = torch.arange(len(ids))
        self.native_to_label_id = ids

    def canvas(self, height: int, width: int) -> tuple:
        """SSD's fixed square for every size; otherwise the size itself (torchvision pads a batch
        to its largest resized image, which would move the others' borders)."""
        fixed = getattr(self.model.transform, "fixed_size", None)
        return tuple(fixed) if fixed else (height, width)

    def _images(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        return [img.to(device=self.device, dtype=torch.float32) for img in images]

    def predict_raw(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        with eval_mode(self.model):
            outputs = self.model(self._images(images))
        results = []
        for out, img in zip(outputs, images):
            ids = out["labels"].long()
            table = self.label_id_to_native.to(ids.device)
            native = torch.where(ids < len(table), table[ids.clamp(max=len(table) - 1)], torch.full_like(ids, -1))
            labels, keep = self.label_map.to_dataset(native)
            h, w = img.shape[-2:]
            boxes = out["boxes"][keep]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            result = {"boxes": boxes, "scores": out["scores"][keep].clamp(0, 1), "labels": labels}
            if "masks" in out:
                result["masks"] = out["masks"][keep]
            results.append(result)
        return results

    def _native_targets(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> list[dict]:
        out = []
        for img, t in zip(images, targets):
            h, w = img.shape[-2:]
            native, keep = self.label_map.to_native(torch.as_tensor(t["labels"], device=self.device))
            boxes = torch.as_tensor(t["boxes"], device=self.device, dtype=torch.float32).reshape(-1, 4)[keep]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            valid = (boxes[:, 2:] > boxes[:, :2]).all(1)  # torchvision rejects degenerate boxes
            target = {"boxes": boxes[valid], "labels": self.native_to_label_id.to(self.device)[native[valid]]}
            if "masks" in t:
                target["masks"] = t["masks"].to(self.device)[keep][valid]
            out.append(target)
        return out

    def loss_raw(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]],
                 seed: int | None = None) -> torch.Tensor:
        images = self._images(images)
        native_targets = self._native_targets(images, targets)
        has_masks = all("masks" in t for t in native_targets)
        seed = self.loss_seed if seed is None else seed
        mode = contextlib.nullcontext() if self.model.training else _loss_mode(self.model, seed)
        with mode, _without_mask_branch(self.model, not has_masks):
            losses = self.model(images, native_targets)
        return sum(losses.values())


def build_torchvision(
    name: str,
    classes: list[str] | None = None,
    num_classes: int | None = None,
    weights: str | Path | None = "default",
    device: str | torch.device = "cpu",
    min_size: int | None = None,
    max_size: int | None = None,
    loss_seed: int | None = 0,
    pseudo_threshold: float = 0.3,
    **model_kwargs,
) -> TorchvisionDetector:
    """Build the torchvision detector registered as ``name``.

    Without ``num_classes`` a zoo architecture keeps its COCO head (ids 1..90) and predictions
    are translated to ``classes``; with it, the head has ``num_classes`` classes of its own
    (labels 1..K, zoo weights then transfer except the class-dependent layers). Toy
    architectures always have their own classes. ``min_size``/``max_size``: the model's
    resize (torchvision defaults 800/1333 for the zoo, 128/256 for toys); for the SSD family
    ``min_size`` is the fixed square input size (default 300, 320, 128). Other keyword
    arguments go to the torchvision constructor (e.g. ``box_score_thresh``).
    """
    from torchvision.models import get_model

    spec = SPECS[name]
    if spec.toy:
        native, dataset = resolve_classes(classes, num_classes, None)
        label_ids = list(range(1, len(native) + 1))
    else:
        coco_names, coco_ids = _coco_classes(spec)
        native, dataset = resolve_classes(classes, num_classes, coco_names)
        label_ids = coco_ids if num_classes is None else list(range(1, len(native) + 1))
    head_classes = max(label_ids) + 1

    size_kwargs = {}
    if not spec.fixed_size:
        size_kwargs = {k: v for k, v in (("min_size", min_size), ("max_size", max_size)) if v is not None}
    if spec.toy:
        model = TOY_BUILDERS[spec.builder](head_classes, **size_kwargs, **model_kwargs)
        _set_batchnorm_momentum(model, TOY_BN_MOMENTUM)
    else:
        model = get_model(
            spec.builder, weights=None, weights_backbone=None, num_classes=head_classes, **size_kwargs, **model_kwargs
        )
    if spec.fixed_size and min_size is not None:
        _set_fixed_size(model, min_size)

    if weights == "default" and spec.toy:
        from icm.detectors.weights import WeightsUnavailableError

        raise WeightsUnavailableError(
            f"{name}: no default weights (a toy detector, trained by scripts/train_detector.py); "
            f"pass --weights {name}=PATH, or weights=None to start from random weights"
        )
    if weights == "default" or is_weights_path(weights):
        state = _zoo_state_dict(name, spec, weights)
        _load_zoo_state(name, model, spec, state, same_head=num_classes is None)

    detector = TorchvisionDetector(
        name, model, dataset, native, label_ids, loss_seed=loss_seed, pseudo_threshold=pseudo_threshold
    )
    detector.build_kwargs = {"min_size": min_size, "max_size": max_size, "loss_seed": loss_seed, **model_kwargs}
    return detector.to(device)


def _register(name: str) -> None:
    def builder(**kwargs) -> TorchvisionDetector:
        return build_torchvision(name, **kwargs)

    builder.__doc__ = build_torchvision.__doc__
    register(name)(builder)


for _name in SPECS:
    _register(_name)
