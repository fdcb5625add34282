"""micrograd.engine for fastgrad: the compiled Value itself (the same type as fastgrad.Value, not a copy)."""
from fastgrad.engine import Value

__all__ = ["Value"]
