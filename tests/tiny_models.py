"""Tiny HF model configs used by the tests and the examples (random weights, no download).

Each entry: family -> (HF model class, config class, config kwargs). "odd" configs use sizes that are not powers of
two (d_inner=96, d_state=8, dt_rank=3, conv width 3) to catch indexing that only works for round numbers.
"""
import torch
from transformers import FalconMambaConfig, FalconMambaForCausalLM, MambaConfig, MambaForCausalLM

VOCAB = 99
CONFIGS = {
    # HF's own MambaModelTester sizes (d_inner 32 from the intermediate_size kwarg, state 16, dt_rank 2, K 4)
    "hf-tester": dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, intermediate_size=32, state_size=16,
                      conv_kernel=4, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "odd": dict(vocab_size=VOCAB, hidden_size=40, num_hidden_layers=3, intermediate_size=96, state_size=8,
                time_step_rank=3, conv_kernel=3, pad_token_id=0, bos_token_id=1, eos_token_id=2),
}
FAMILIES = {
    "mamba": (MambaForCausalLM, MambaConfig),
    "falcon_mamba": (FalconMambaForCausalLM, FalconMambaConfig),
}


def build(family: str, config: str, dtype=torch.float32, seed: int = 0, **overrides):
    model_cls, cfg_cls = FAMILIES[family]
    kw = dict(CONFIGS[config], **overrides)
    if family == "falcon_mamba":
        kw.setdefault("tie_word_embeddings", False)
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**kw)).to(dtype).eval()
    model.generation_config.eos_token_id = None  # always generate the full length
    model.generation_config.pad_token_id = 0
    return model
