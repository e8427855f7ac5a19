"""Built-in constraints (rates, fairness, per-sample, robustness, causal)."""

__all__: list = []
