"""ssmtp: tensor-parallel inference for selective state-space language models.

    import ssmtp
    model = ssmtp.parallelize(hf_model)      # in place; HF forward/generate keep working
"""
from . import ops  # noqa: F401  (registers the ssmtp:: torch.library ops)

__version__ = "0.1.0"
from .models import parallelize, supported_classes  # noqa: F401,E402
from .engine import LLM, RequestOutput, SamplingParams, StreamOutput  # noqa: F401,E402
