"""NumPyro glue: use a differential-equation solve inside a probabilistic model."""

from ._failure import reject_failed_solve as reject_failed_solve

__all__ = ["reject_failed_solve"]
