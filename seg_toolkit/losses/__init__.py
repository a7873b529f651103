"""Segmentation losses and their weighted combination, built from the config.

Conventions (the same for every loss here):

* ``logits``: float ``(N, C, H, W)``. Binary: ``C == 1``; multilabel: one sigmoid per
  channel; multiclass: softmax over dim 1.
* ``target``: multiclass -> int64 ``(N, H, W)`` with classes ``0..C-1``; binary /
  multilabel -> float ``(N, C, H, W)`` with 0.0 / 1.0. Void pixels carry
  :data:`seg_toolkit.config.IGNORE_INDEX` (255) in both and never contribute to a loss
  value or a gradient.
* A batch whose pixels are all void gives a loss of exactly 0 with finite (zero)
  gradients, never NaN.

``cfg.loss`` maps loss names to weights (``{bce: 0.5, dice: 0.5}``) and
``cfg.loss_params`` maps names to keyword arguments (``{focal: {gamma: 2.0}}``).
:func:`build_loss` validates both and returns a :class:`LossCombo`, whose ``forward``
returns the weighted total and each term's unweighted value (detached, for logging).

Which implementation each name uses, and why:

* ``dice``, ``jaccard``, ``tversky``: our own (``region.py``), with smp's formulas and
  conventions, value for value and gradient for gradient (the tests compare them with
  ``segmentation_models_pytorch.losses``): void pixels are left out of prediction and truth
  before the sums, an all-void or empty batch gives 0 with finite gradients, and the scores
  are computed over the whole batch per channel. A channel with no true pixel in the batch
  contributes 0 (but still counts in the mean over channels), so these losses do not
  penalise false positives on an all-empty batch; pair them with ``bce`` / ``ce`` / ``focal``.
  Ours because smp's builds a one-hot target and reduces permuted, reshaped copies of the
  (channels-last) probabilities: three sums per channel make a multiclass term about 2x faster.
* ``ce``: our own on top of ``F.cross_entropy``, because its ``mean`` reduction is 0/0 =
  NaN for an all-void batch. Same value as torch's ``mean`` otherwise (class weights and
  label smoothing included).
* ``bce``: our own. smp's ``SoftBCEWithLogitsLoss`` zeroes void pixels but still divides
  by *all* pixels (void pixels dilute the mean), and a per-channel ``pos_weight`` must be
  shaped ``(C, 1, 1)`` to broadcast over ``(N, C, H, W)``.
* ``focal``: our own. smp's ``FocalLoss`` is NaN on an all-void binary batch (mean of an
  empty tensor), raises IndexError for multilabel targets with void pixels (a 4-D mask
  indexing a 3-D channel slice), and in multiclass mode it applies a *sigmoid* focal loss
  to each channel of softmax logits; ours is the softmax focal loss for multiclass.
* ``lovasz``: our own (after Berman et al., 2018). smp's multiclass ``LovaszLoss`` returns
  an empty ``(0, C)`` tensor instead of a scalar on an all-void batch, and its
  binary/multilabel hinge flattens all channels into one ranking (the IoU of the
  concatenated channels, not the mean of the per-channel IoUs).

Where: ``terms.py`` (ce, bce, focal), ``lovasz.py``, ``region.py`` (dice, jaccard, tversky), ``combo.py`` (the names and parameters the
config accepts, :class:`LossCombo`, :func:`build_loss`, :func:`model_loss`).
"""

from .combo import LOSS_NAMES, PIXEL_WEIGHTED, TASKS, LossCombo, build_loss, build_loss_term, model_loss
from .lovasz import LovaszLoss, lovasz_grad, lovasz_hinge_flat, lovasz_softmax_flat
from .region import RegionLoss, region_sums
from .terms import CrossEntropyLoss, FocalLoss, MaskedBCEWithLogitsLoss

__all__ = [
    "LOSS_NAMES",
    "PIXEL_WEIGHTED",
    "TASKS",
    "LossCombo",
    "build_loss",
    "build_loss_term",
    "model_loss",
    "CrossEntropyLoss",
    "MaskedBCEWithLogitsLoss",
    "FocalLoss",
    "LovaszLoss",
    "lovasz_grad",
    "lovasz_hinge_flat",
    "lovasz_softmax_flat",
    "RegionLoss",
    "region_sums",
]
