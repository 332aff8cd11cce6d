"""A user-defined regularizer, loaded by import path in the tests."""

from torch import Tensor

from rspo_bench.methods.regularizers import Regularizer


class SquaredLogRatio(Regularizer):
    name = "squared_log_ratio"
    gradient_constant = 2.0
    divergence_name = "scaled KL(pi || mu)"

    def __init__(self, *, scale: float = 1.0) -> None:
        self.scale = scale

    def estimate(self, values: Tensor) -> Tensor:
        return self.scale * values.square()

    def divergence(self, policy_probs: Tensor, ref_probs: Tensor) -> Tensor:
        return self.scale * (policy_probs * (policy_probs.log() - ref_probs.log())).sum(-1)


class NaNRegularizer(Regularizer):
    """Returns NaN, to exercise the trainer's divergence check."""

    name = "nan"
    gradient_constant = 1.0
    divergence_name = "none"

    def estimate(self, values: Tensor) -> Tensor:
        return values * float("nan")

    def divergence(self, policy_probs: Tensor, ref_probs: Tensor) -> Tensor:
        return (policy_probs * float("nan")).sum(-1)
