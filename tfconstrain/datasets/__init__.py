"""Small datasets shipped with tfconstrain (no network at run time)."""

__all__: list = []
