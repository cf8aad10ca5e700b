"""Model modules; importing them registers their variants (``vitlab.registry`` imports this package, no head)."""

from vitlab.models import classify, detect, diffusion  # noqa: F401

__all__ = ["classify", "detect", "diffusion"]
