"""Tensor-parallel plumbing: the TP group, the communicator, and weight-sharding helpers."""
from .comm import Communicator, get_communicator  # noqa: F401
