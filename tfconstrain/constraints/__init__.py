"""Built-in constraints (rates, fairness, per-sample, robustness, causal)."""

from tfconstrain.constraints.causal import CounterfactualInvariance
from tfconstrain.constraints.counts import CountConstraint
from tfconstrain.constraints.fairness import DemographicParity
from tfconstrain.constraints.fairness import EqualizedOdds
from tfconstrain.constraints.fairness import EqualOpportunity
from tfconstrain.constraints.fairness import GroupLoss
from tfconstrain.constraints.fairness import RateGap
from tfconstrain.constraints.per_sample import PerSampleConstraint
from tfconstrain.constraints.rates import ErrorRate
from tfconstrain.constraints.rates import FalsePositiveRate
from tfconstrain.constraints.rates import PositivePredictionRate
from tfconstrain.constraints.rates import Precision
from tfconstrain.constraints.rates import Rate
from tfconstrain.constraints.rates import Recall
from tfconstrain.constraints.rates import TruePositiveRate
from tfconstrain.constraints.robustness import InputGradientNorm
from tfconstrain.constraints.robustness import Monotonicity
from tfconstrain.constraints.robustness import SpectralNorm

__all__ = [
    "CountConstraint",
    "CounterfactualInvariance",
    "DemographicParity",
    "EqualOpportunity",
    "EqualizedOdds",
    "ErrorRate",
    "FalsePositiveRate",
    "GroupLoss",
    "InputGradientNorm",
    "Monotonicity",
    "PerSampleConstraint",
    "PositivePredictionRate",
    "Precision",
    "Rate",
    "RateGap",
    "Recall",
    "SpectralNorm",
    "TruePositiveRate",
]
