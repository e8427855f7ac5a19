"""Built-in constraints (rates, fairness, per-sample, robustness, causal)."""

from tfconstrain.constraints.fairness import DemographicParity
from tfconstrain.constraints.fairness import EqualizedOdds
from tfconstrain.constraints.fairness import EqualOpportunity
from tfconstrain.constraints.fairness import GroupLoss
from tfconstrain.constraints.fairness import RateGap
from tfconstrain.constraints.rates import ErrorRate
from tfconstrain.constraints.rates import FalsePositiveRate
from tfconstrain.constraints.rates import PositivePredictionRate
from tfconstrain.constraints.rates import Precision
from tfconstrain.constraints.rates import Rate
from tfconstrain.constraints.rates import Recall
from tfconstrain.constraints.rates import TruePositiveRate

__all__ = [
    "DemographicParity",
    "EqualOpportunity",
    "EqualizedOdds",
    "ErrorRate",
    "FalsePositiveRate",
    "GroupLoss",
    "PositivePredictionRate",
    "Precision",
    "Rate",
    "RateGap",
    "Recall",
    "TruePositiveRate",
]
