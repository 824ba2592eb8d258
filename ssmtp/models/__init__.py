"""TP replacements for HF modules, and the swap table used by ssmtp.parallelize."""
from .registry import parallelize, supported_classes  # noqa: F401
