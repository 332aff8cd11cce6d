"""Self-play losses and regularizers."""

from .base_losses import BUILTIN_BASE_LOSSES, BaseLoss, DPOLoss, HardSPPOLoss, IPOLoss, SoftSPPOLoss, base_loss_class
from .batch import PreferenceBatch
from .loss import LossOutput, RegularizerTerm, RSPOLoss
from .regularizers import BUILTIN_REGULARIZERS, Regularizer, build_regularizer, regularizer_class

__all__ = [
    "BUILTIN_BASE_LOSSES",
    "BUILTIN_REGULARIZERS",
    "BaseLoss",
    "DPOLoss",
    "HardSPPOLoss",
    "IPOLoss",
    "LossOutput",
    "PreferenceBatch",
    "RSPOLoss",
    "Regularizer",
    "RegularizerTerm",
    "SoftSPPOLoss",
    "base_loss_class",
    "build_regularizer",
    "regularizer_class",
]
