"""Stage one, Meta-AAFG: perturb images inside an L-inf ball so a model set of detectors
does better on them (meta-train / meta-test split for transfer to unseen detectors)."""

from icm.aafg.meta_aafg import MetaAAFGConfig, augment_batch, gradient_budget

__all__ = ["MetaAAFGConfig", "augment_batch", "gradient_budget"]
