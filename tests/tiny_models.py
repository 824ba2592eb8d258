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


# Zamba (v1). "hf-tester" is HF's ZambaModelTester config (MLP intermediate 37: uneven split at TP 2/4; 2 mamba heads:
# split across ranks at TP 4). "divisible": one mamba head (split at TP 2 and 4), GQA 8/4 heads, MLP 48. "odd":
# 4 mamba heads of 18 channels, d_state 8, dt_rank 5, conv width 3, projection biases, MLP 50, three hybrid layers.
# initializer_range 0.2 (HF default 0.02): at 0.02 the SSM state moves the logits by ~1e-7, below every tolerance, so
# a wrong state would pass unseen; at 0.2 restarting the scan from a zero state moves them by O(1).
ZAMBA_CONFIGS = {
    "hf-tester": dict(vocab_size=VOCAB, hidden_size=64, mamba_dt_rank=32, num_hidden_layers=5, attn_layer_offset=1,
                      attn_layer_period=8, num_attention_heads=4, num_key_value_heads=4, n_mamba_heads=2,
                      intermediate_size=37, hidden_act="gelu"),
    "divisible": dict(vocab_size=VOCAB, hidden_size=64, mamba_dt_rank=8, num_hidden_layers=4,
                      layers_block_type=["mamba", "hybrid", "mamba", "hybrid"], num_attention_heads=8,
                      num_key_value_heads=4, n_mamba_heads=1, intermediate_size=48, hidden_act="gelu"),
    "odd": dict(vocab_size=VOCAB, hidden_size=36, mamba_dt_rank=5, mamba_d_state=8, mamba_d_conv=3,
                num_hidden_layers=6, layers_block_type=["mamba", "hybrid", "mamba", "mamba", "hybrid", "hybrid"],
                num_attention_heads=4, num_key_value_heads=4, n_mamba_heads=4, intermediate_size=50,
                mamba_proj_bias=True, hidden_act="gelu"),
}


def build_zamba(config: str, dtype=torch.float32, seed: int = 0, **overrides):
    from transformers import ZambaConfig, ZambaForCausalLM

    kw = dict(ZAMBA_CONFIGS[config], pad_token_id=0, bos_token_id=1, eos_token_id=2, use_mamba_kernels=False,
              attn_implementation="eager", initializer_range=0.2)
    kw.update(overrides)
    torch.manual_seed(seed)
    model = ZambaForCausalLM(ZambaConfig(**kw)).eval()
    with torch.no_grad():  # HF initialises biases to zero, which would hide a bias applied twice or not at all
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.2)
    model = model.to(dtype)
    model.generation_config.eos_token_id = None  # always generate the full length
    model.generation_config.pad_token_id = 0
    return model


# Zamba2. "hf-tester" is HF's Zamba2ModelTester config (8 mamba heads in 8 groups, d_state 2, chunk 8, 2 attention
# heads: TP 4 is refused, RoPE on, one shared block). "g1": one B/C group as in the 2.7B model (B/C replicated, the
# gated norm's group spans all ranks), 2 shared blocks with q/k/v and MLP adapters. "odd": 4 heads of 12 channels in
# 2 groups (a group spans 2 ranks at TP 4), d_state 8, conv width 3, chunk 4, linear biases, MLP 30, RoPE, adapters.
ZAMBA2_CONFIGS = {
    "hf-tester": dict(vocab_size=VOCAB, hidden_size=16, mamba_d_state=2, chunk_size=8, num_hidden_layers=3,
                      num_attention_heads=2, n_mamba_heads=8, mamba_ngroups=8, intermediate_size=4,
                      layers_block_type=["mamba", "hybrid", "hybrid"], num_mem_blocks=1, use_mem_rope=True,
                      hidden_act="gelu"),
    "g1": dict(vocab_size=VOCAB, hidden_size=32, mamba_d_state=16, chunk_size=8, num_hidden_layers=6,
               num_attention_heads=4, n_mamba_heads=8, mamba_ngroups=1, intermediate_size=48,
               layers_block_type=["mamba", "hybrid", "mamba", "hybrid", "hybrid", "mamba"], num_mem_blocks=2,
               use_shared_attention_adapter=True, adapter_rank=8, hidden_act="gelu"),
    "odd": dict(vocab_size=VOCAB, hidden_size=24, mamba_d_state=8, mamba_d_conv=3, chunk_size=4, num_hidden_layers=5,
                num_attention_heads=4, n_mamba_heads=4, mamba_ngroups=2, intermediate_size=30, add_bias_linear=True,
                layers_block_type=["mamba", "hybrid", "mamba", "hybrid", "hybrid"], num_mem_blocks=2,
                use_shared_attention_adapter=True, adapter_rank=6, use_mem_rope=True, hidden_act="gelu"),
}


def build_zamba2(config: str, dtype=torch.float32, seed: int = 0, **overrides):
    from transformers import Zamba2Config, Zamba2ForCausalLM

    kw = dict(ZAMBA2_CONFIGS[config], pad_token_id=0, bos_token_id=1, eos_token_id=2, use_mamba_kernels=False,
              attn_implementation="eager", initializer_range=0.2)
    kw.update(overrides)
    torch.manual_seed(seed)
    model = Zamba2ForCausalLM(Zamba2Config(**kw)).eval()
    with torch.no_grad():  # HF initialises biases to zero (and D to one): randomise them so that they are checked
        for name, p in model.named_parameters():
            if name.endswith(".bias") or name.endswith(".D"):
                p.normal_(1.0 if name.endswith(".D") else 0.0, 0.2)
            elif name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.normal_(1.0, 0.2)
    model = model.to(dtype)
    model.generation_config.eos_token_id = None  # always generate the full length
    model.generation_config.pad_token_id = 0
    return model


PROMPT_LENGTHS = (13, 5, 21, 1, 9, 17)  # engine tests: more prompts than their 4 slots, so requests queue and join


def prompts(seed: int = 1) -> list:
    """Random token-id prompts of PROMPT_LENGTHS (ids 3..98: inside every tiny config's vocabulary)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 99, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]


def close_rel(a, b, rel: float, what: str) -> None:
    """max |a - b| <= rel * max |b| + 1e-6 (logits of a model against a reference run of it), with the figures in the
    message."""
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    err = (a - b).abs().max().item()
    bound = rel * b.abs().max().item() + 1e-6
    assert err <= bound, f"{what}: max abs error {err:.3e} > {bound:.3e}"


def same_generations(want, got, tol: float) -> None:
    """Two lists of the engine's RequestOutputs (generated with return_logits=True) for the same prompts: the same
    tokens, the logits of every step within tol."""
    assert len(want) == len(got)
    for a, b in zip(want, got):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(torch.stack(list(b.logits)), torch.stack(list(a.logits)), rtol=tol, atol=tol)
