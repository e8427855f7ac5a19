"""Small datasets shipped with tfconstrain (no network at run time)."""

from tfconstrain.datasets.adult import AdultData
from tfconstrain.datasets.adult import load_adult

__all__ = ["AdultData", "load_adult"]
