"""Model presets: real checkpoint shapes with random weights (benchmarks), and tiny models that run in seconds on a CPU.

    PRESETS                    name -> (HF config class name, config kwargs, note)
    preset_entry(name)         PRESETS[name], or for "<Mamba preset>@tpN" one TP=N rank's shapes as a one-GPU model
                               (d_inner / N): a TP rank's compute measured on one GPU (no all-reduce)
    preset_config(name)        the HF config object
    PresetSource(name, seed)   a weight source (see loading.py) whose tensors are generated on demand, slice by slice:
                               a rank generates only its own shard, directly on its device, never the full model.

Random weights are generated in tiles of 512 x 512 elements (over the first two dimensions), each tile from its own
seed = hash(preset seed, tensor name, tile index). A slice therefore has the same values whatever the TP degree or
the rank that asks for it: TP=1 and TP=2 runs of a preset hold the same model (on the same device type; the CPU and
CUDA generators differ). Scales keep a deep random model finite in bf16 (unit-variance projections, HF's dt init).

Shapes: shared/reference/hf-models.md section 10. The Zamba / Zamba2 presets name their tensors as HF checkpoints do
(the shared blocks once, under the hybrid layers that own them; HF ties the others to those).
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from types import SimpleNamespace
from typing import Optional

import torch

_HYB_ZAMBA2 = (6, 12, 18, 24, 30, 36, 42, 47, 51)

# Every Mamba-family attribute the engine reads is spelled out (HF's MambaConfig defaults where the checkpoint does not
# say otherwise), so a preset needs no transformers import: the CLI's default run starts in about a second.
_MAMBA_DEFAULTS = dict(layer_norm_epsilon=1e-5, use_bias=False, use_conv_bias=True, hidden_act="silu",
                       residual_in_fp32=True, time_step_scale=1.0, time_step_min=0.001, time_step_max=0.1,
                       time_step_floor=1e-4, pad_token_id=0, bos_token_id=0, eos_token_id=0)

PRESETS: dict = {
    "tiny": ("mamba", dict(vocab_size=512, hidden_size=128, intermediate_size=256, state_size=16, conv_kernel=4,
                           time_step_rank=8, num_hidden_layers=4, tie_word_embeddings=True, bos_token_id=1,
                           eos_token_id=2),
             "4-layer Mamba, byte-level tokenizer; runs on a CPU in seconds"),
    "tiny-falcon": ("falcon_mamba", dict(vocab_size=512, hidden_size=128, intermediate_size=256, state_size=16,
                                         conv_kernel=4, time_step_rank=8, num_hidden_layers=4, mixer_rms_eps=1e-6,
                                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
                    "4-layer Falcon-Mamba, byte-level tokenizer"),
    "mamba-2.8b": ("mamba", dict(vocab_size=50280, hidden_size=2560, intermediate_size=5120, state_size=16,
                                 conv_kernel=4, time_step_rank=160, num_hidden_layers=64, tie_word_embeddings=True),
                   "state-spaces/mamba-2.8b-hf shapes"),
    "falcon-mamba-7b": ("falcon_mamba", dict(vocab_size=65024, hidden_size=4096, intermediate_size=8192, state_size=16,
                                             conv_kernel=4, time_step_rank=256, num_hidden_layers=64,
                                             mixer_rms_eps=1e-6, tie_word_embeddings=False, eos_token_id=11),
                        "tiiuae/falcon-mamba-7b shapes"),
    "tiny-zamba": ("zamba", dict(vocab_size=512, hidden_size=64, num_hidden_layers=6, mamba_dt_rank=8,
                                 layers_block_type=["mamba", "hybrid", "mamba", "mamba", "hybrid", "mamba"],
                                 num_attention_heads=4, num_key_value_heads=4, n_mamba_heads=2, intermediate_size=128,
                                 hidden_act="gelu", max_position_embeddings=1024, use_mamba_kernels=False,
                                 bos_token_id=1, eos_token_id=2, pad_token_id=0),
                   "6-layer Zamba (2 hybrid), byte-level tokenizer"),
    "tiny-zamba2": ("zamba2", dict(vocab_size=512, hidden_size=64, num_hidden_layers=6, mamba_d_state=16,
                                   layers_block_type=["mamba", "hybrid", "mamba", "hybrid", "mamba", "hybrid"],
                                   n_mamba_heads=8, mamba_ngroups=1, intermediate_size=128, num_attention_heads=4,
                                   num_mem_blocks=2, use_shared_attention_adapter=True, adapter_rank=8,
                                   use_mem_rope=True, chunk_size=32, max_position_embeddings=1024,
                                   use_mamba_kernels=False, bos_token_id=1, eos_token_id=2, pad_token_id=0),
                    "6-layer Zamba2 (3 hybrid, 2 shared blocks, adapters, RoPE), byte-level tokenizer"),
    "zamba-7b": ("zamba", dict(vocab_size=32000, hidden_size=3712, attention_hidden_size=7424,
                               intermediate_size=14848, num_hidden_layers=76, num_attention_heads=16,
                               attention_head_dim=464, num_key_value_heads=16, n_mamba_heads=2, hidden_act="gelu",
                               max_position_embeddings=4096, attn_layer_period=6, attn_layer_offset=4,
                               use_mamba_kernels=False, mamba_d_state=16, mamba_d_conv=4, mamba_expand=2,
                               mamba_dt_rank=232, mamba_conv_bias=True, mamba_proj_bias=False),
                 "Zyphra/Zamba-7B-v1 shapes"),
    "zamba2-2.7b": ("zamba2", dict(vocab_size=32000, hidden_size=2560, num_hidden_layers=54,
                                   layers_block_type=["hybrid" if i in _HYB_ZAMBA2 else "mamba" for i in range(54)],
                                   mamba_d_state=64, mamba_d_conv=4, mamba_expand=2, mamba_ngroups=1,
                                   n_mamba_heads=80, intermediate_size=10240, num_attention_heads=32,
                                   num_key_value_heads=32, num_mem_blocks=2, adapter_rank=128, chunk_size=256,
                                   use_mamba_kernels=False),
                    "Zyphra/Zamba2-2.7B shapes"),
}

_HF_CLASS = {"mamba": "MambaConfig", "falcon_mamba": "FalconMambaConfig", "zamba": "ZambaConfig",
             "zamba2": "Zamba2Config"}

# The embedded default model: a small byte-level Mamba trained by benchmarks/train_tiny.py (when it has been saved
# into the package); without it the default is the random "tiny" preset.
EMBEDDED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "tiny-mamba-bytes")


def default_model() -> str:
    return EMBEDDED if os.path.isfile(os.path.join(EMBEDDED, "config.json")) else "tiny"


class PresetConfig(SimpleNamespace):
    """A Mamba-family preset's config: the attributes HF's config would have (see _MAMBA_DEFAULTS)."""

    def to_hf(self):
        import transformers

        kw = {k: v for k, v in vars(self).items() if k != "model_type"}
        return getattr(transformers, _HF_CLASS[self.model_type])(**kw)


_RANK_SHAPES = re.compile(r"^(?P<base>.+)@tp(?P<tp>[0-9]+)$")


def preset_entry(name) -> Optional[tuple]:
    """(family, config kwargs, note) of a preset name, or None if it names none. "<preset>@tpN" (Mamba and
    Falcon-Mamba presets): the mixers one rank holds at TP=N (d_inner / N; every other size as the preset) as a
    one-GPU model, to measure a TP rank's compute where N GPUs are not at hand (the all-reduces are not in it)."""
    if not isinstance(name, str):
        return None
    if name in PRESETS:
        return PRESETS[name]
    m = _RANK_SHAPES.match(name)
    if m is None or m["base"] not in PRESETS:
        return None
    family, kw, note = PRESETS[m["base"]]
    tp, d = int(m["tp"]), kw.get("intermediate_size")
    if family not in ("mamba", "falcon_mamba"):
        raise ValueError(f"preset {name!r}: one rank's shapes (@tpN) are defined for the Mamba presets only")
    if tp < 1 or d % tp:
        raise ValueError(f"preset {name!r}: intermediate_size {d} does not split over tp={tp}")
    return family, dict(kw, intermediate_size=d // tp), f"{note}, one TP={tp} rank's mixers (d_inner {d // tp})"


def preset_config(name: str, hf: bool = False):
    """The preset's config: a PresetConfig for Mamba families (hf=True: the transformers config object), the
    transformers config for the others."""
    entry = preset_entry(name)
    if entry is None:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)} (Mamba ones also as <name>@tpN)")
    family, kw, _ = entry
    if family in ("mamba", "falcon_mamba"):
        cfg = PresetConfig(model_type=family, **dict(_MAMBA_DEFAULTS, **kw))
        return cfg.to_hf() if hf else cfg
    import transformers

    return getattr(transformers, _HF_CLASS[family])(**kw)


class ByteTokenizer:
    """UTF-8 bytes as token ids, shifted by ``offset``: the tiny presets use offset 3 (0 = pad, 1 = bos, 2 = eos), the
    embedded byte-level model offset 0. Text prompts then work with no download. encode/decode mirror the HF
    tokenizer methods the engine calls."""

    def __init__(self, offset: int = 3):
        self.offset = offset
        self.vocab_size = 256 + offset

    def encode(self, text: str, add_special_tokens: bool = False) -> list:
        return [b + self.offset for b in text.encode("utf-8")]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return bytes(i - self.offset for i in ids if self.offset <= i < self.offset + 256).decode("utf-8", "replace")


# ------------------------------------------------------------------------------------------------ random weights

_TILE = 512


def _seed(*parts) -> int:
    d = hashlib.blake2b("|".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(d, "little") & ((1 << 63) - 1)


class RandomTensor:
    """A tensor of the given shape and init, generated only where sliced (tile-deterministic, see module doc).

    init: ("normal", std) | ("uniform", bound) | ("ones",) | ("zeros",) | ("alog",) | ("dt_bias", dt_min, dt_max)
    """

    def __init__(self, key: str, shape, init: tuple, seed: int, device):
        self.key, self.shape, self.init, self.seed = key, tuple(int(s) for s in shape), init, seed
        self.device = torch.device(device)

    def get_shape(self):
        return list(self.shape)

    def __getitem__(self, idx) -> torch.Tensor:
        if not isinstance(idx, tuple):
            idx = (idx,)
        if len(idx) > len(self.shape):
            raise IndexError(f"{self.key}: too many indices for shape {self.shape}")
        ranges, squeeze = [], []
        for d, size in enumerate(self.shape):
            s = idx[d] if d < len(idx) else slice(None)
            if isinstance(s, int):
                s = slice(s % size, s % size + 1)
                squeeze.append(d)
            if not isinstance(s, slice):
                raise TypeError(f"{self.key}: only slices and ints are supported, got {s!r}")
            a, b, step = s.indices(size)
            if step != 1:
                raise ValueError(f"{self.key}: slices with a step are not supported")
            ranges.append((a, max(a, b)))
        out = self._region(ranges)
        for d in reversed(squeeze):
            out = out.squeeze(d)
        return out

    def full(self) -> torch.Tensor:
        return self[()]

    def _region(self, ranges) -> torch.Tensor:
        kind = self.init[0]
        shape = tuple(b - a for a, b in ranges)
        dev = self.device
        if kind == "ones":
            return torch.ones(shape, device=dev)
        if kind == "zeros":
            return torch.zeros(shape, device=dev)
        if kind == "alog":  # log(1..N) along the last dim, as HF initialises A_log
            a, b = ranges[-1]
            row = torch.log(torch.arange(a + 1, b + 1, dtype=torch.float32, device=dev))
            return row.expand(shape).contiguous()
        out = torch.empty(shape, device=dev)
        if out.numel() == 0:
            return out
        g = torch.Generator(device=dev)
        tiled = min(2, len(self.shape))
        tile_ranges = []
        for d in range(tiled):
            a, b = ranges[d]
            tile_ranges.append(range(a // _TILE, (b - 1) // _TILE + 1))
        rest = self.shape[tiled:]
        rest_idx = tuple(slice(a, b) for a, b in ranges[tiled:])
        for t0 in tile_ranges[0]:
            for t1 in (tile_ranges[1] if tiled > 1 else [0]):
                tile_lo = [t0 * _TILE] + ([t1 * _TILE] if tiled > 1 else [])
                tshape = [min(_TILE, self.shape[d] - tile_lo[d]) for d in range(tiled)] + list(rest)
                g.manual_seed(_seed(self.seed, self.key, t0, t1))
                tile = self._fill(tshape, g)
                src, dst = [], []
                for d in range(tiled):
                    a, b = ranges[d]
                    lo = max(a, tile_lo[d])
                    hi = min(b, tile_lo[d] + tshape[d])
                    src.append(slice(lo - tile_lo[d], hi - tile_lo[d]))
                    dst.append(slice(lo - a, hi - a))
                out[tuple(dst)] = tile[tuple(src) + rest_idx]
        return out

    def _fill(self, shape, g) -> torch.Tensor:
        kind, dev = self.init[0], self.device
        if kind == "normal":
            return torch.randn(shape, generator=g, device=dev) * self.init[1]
        u = torch.rand(shape, generator=g, device=dev)
        if kind == "uniform":
            return (2 * u - 1) * self.init[1]
        if kind == "dt_bias":  # HF: dt = exp(U * (log max - log min) + log min) >= 1e-4, bias = softplus^-1(dt)
            lo, hi = math.log(self.init[1]), math.log(self.init[2])
            dt = torch.exp(u * (hi - lo) + lo).clamp(min=1e-4)
            return dt + torch.log(-torch.expm1(-dt))
        raise ValueError(f"{self.key}: unknown init {self.init!r}")


def mamba_tensor_specs(cfg) -> dict:
    """name -> (shape, init) for a Mamba / Falcon-Mamba checkpoint."""
    H, d, N, K, R = cfg.hidden_size, cfg.intermediate_size, cfg.state_size, cfg.conv_kernel, int(cfg.time_step_rank)
    V = cfg.vocab_size
    out = {"backbone.embeddings.weight": ((V, H), ("normal", 0.02)),
           "backbone.norm_f.weight": ((H,), ("ones",))}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = ((V, H), ("normal", 0.02))
    for i in range(cfg.num_hidden_layers):
        p = f"backbone.layers.{i}."
        out[p + "norm.weight"] = ((H,), ("ones",))
        m = p + "mixer."
        out[m + "in_proj.weight"] = ((2 * d, H), ("normal", H ** -0.5))
        if cfg.use_bias:
            out[m + "in_proj.bias"] = ((2 * d,), ("zeros",))
        out[m + "conv1d.weight"] = ((d, 1, K), ("uniform", K ** -0.5))
        if cfg.use_conv_bias:
            out[m + "conv1d.bias"] = ((d,), ("zeros",))
        out[m + "x_proj.weight"] = ((R + 2 * N, d), ("normal", d ** -0.5))
        out[m + "dt_proj.weight"] = ((d, R), ("uniform", R ** -0.5 * cfg.time_step_scale))
        out[m + "dt_proj.bias"] = ((d,), ("dt_bias", cfg.time_step_min, cfg.time_step_max))
        out[m + "A_log"] = ((d, N), ("alog",))
        out[m + "D"] = ((d,), ("ones",))
        out[m + "out_proj.weight"] = ((H, d), ("normal", d ** -0.5))
        if cfg.use_bias:
            out[m + "out_proj.bias"] = ((H,), ("zeros",))
    return out


def _hybrid_ids(cfg) -> list:
    return [i for i, t in enumerate(cfg.layers_block_type) if t == "hybrid"]


def zamba_tensor_specs(cfg) -> dict:
    """name -> (shape, init) for a Zamba (v1) checkpoint (HF names; the shared block under the first hybrid layer)."""
    H, V = cfg.hidden_size, cfg.vocab_size
    d = cfg.mamba_expand * H
    nh, N, K, R = cfg.n_mamba_heads, cfg.mamba_d_state, cfg.mamba_d_conv, int(cfg.mamba_dt_rank)
    hd = d // nh
    A2, hda, nq, nkv, inter = cfg.attention_hidden_size, cfg.attention_head_dim, cfg.num_attention_heads, \
        cfg.num_key_value_heads, cfg.intermediate_size
    out = {"model.embed_tokens.weight": ((V, H), ("normal", 0.02)), "model.final_layernorm.weight": ((H,), ("ones",))}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = ((V, H), ("normal", 0.02))
    hyb = _hybrid_ids(cfg)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}." + ("mamba_decoder." if i in hyb else "")
        out[p + "input_layernorm.weight"] = ((H,), ("ones",))
        m = p + "mamba."
        out[m + "in_proj.weight"] = ((2 * d, H), ("normal", H ** -0.5))
        out[m + "conv1d.weight"] = ((d, 1, K), ("uniform", K ** -0.5))
        if cfg.mamba_conv_bias:
            out[m + "conv1d.bias"] = ((d,), ("zeros",))
        out[m + "x_proj_weight"] = ((nh, R + 2 * N, hd), ("normal", hd ** -0.5))
        out[m + "dt_proj_weight"] = ((nh, hd, R), ("uniform", R ** -0.5))
        out[m + "dt_proj_bias"] = ((nh, hd), ("dt_bias", cfg.time_step_min, cfg.time_step_max))
        out[m + "A_log"] = ((nh, hd, N), ("alog",))
        out[m + "D"] = ((nh, hd), ("ones",))
        out[m + "out_proj.weight"] = ((H, d), ("normal", d ** -0.5))
        if cfg.mamba_proj_bias:
            out[m + "in_proj.bias"] = ((2 * d,), ("zeros",))
            out[m + "out_proj.bias"] = ((H,), ("zeros",))
        if i in hyb:
            out[f"model.layers.{i}.linear.weight"] = ((H, H), ("normal", H ** -0.5))
    s = f"model.layers.{hyb[0]}.shared_transf." if hyb else None
    if s:
        out[s + "input_layernorm.weight"] = ((A2,), ("ones",))
        out[s + "pre_ff_layernorm.weight"] = ((H,), ("ones",))
        out[s + "self_attn.q_proj.weight"] = ((nq * hda, A2), ("normal", A2 ** -0.5))
        out[s + "self_attn.k_proj.weight"] = ((nkv * hda, A2), ("normal", A2 ** -0.5))
        out[s + "self_attn.v_proj.weight"] = ((nkv * hda, A2), ("normal", A2 ** -0.5))
        out[s + "self_attn.o_proj.weight"] = ((H, nq * hda), ("normal", (nq * hda) ** -0.5))
        out[s + "feed_forward.gate_proj.weight"] = ((inter, H), ("normal", H ** -0.5))
        out[s + "feed_forward.up_proj.weight"] = ((inter, H), ("normal", H ** -0.5))
        out[s + "feed_forward.down_proj.weight"] = ((H, inter), ("normal", inter ** -0.5))
    return out


def zamba2_tensor_specs(cfg) -> dict:
    """name -> (shape, init) for a Zamba2 checkpoint (HF names; shared block b under hybrid layer b's index)."""
    H, V = cfg.hidden_size, cfg.vocab_size
    d = int(cfg.mamba_expand * H)
    nh, G, N, K = cfg.n_mamba_heads, cfg.mamba_ngroups, cfg.mamba_d_state, cfg.mamba_d_conv
    conv_dim = d + 2 * G * N
    A2, hda, nq, nkv, inter = cfg.attention_hidden_size, cfg.attention_head_dim, cfg.num_attention_heads, \
        cfg.num_key_value_heads, cfg.intermediate_size
    bias = bool(cfg.add_bias_linear)
    out = {"model.embed_tokens.weight": ((V, H), ("normal", 0.02)), "model.final_layernorm.weight": ((H,), ("ones",))}
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = ((V, H), ("normal", 0.02))
    hyb = _hybrid_ids(cfg)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}." + ("mamba_decoder." if i in hyb else "")
        out[p + "input_layernorm.weight"] = ((H,), ("ones",))
        m = p + "mamba."
        out[m + "in_proj.weight"] = ((d + conv_dim + nh, H), ("normal", H ** -0.5))
        out[m + "conv1d.weight"] = ((conv_dim, 1, K), ("uniform", K ** -0.5))
        out[m + "conv1d.bias"] = ((conv_dim,), ("zeros",))
        out[m + "dt_bias"] = ((nh,), ("dt_bias", cfg.time_step_min, cfg.time_step_max))
        out[m + "A_log"] = ((nh,), ("alog",))
        out[m + "D"] = ((nh,), ("ones",))
        out[m + "norm.weight"] = ((d,), ("ones",))
        out[m + "out_proj.weight"] = ((H, d), ("normal", d ** -0.5))
        if bias:
            out[m + "in_proj.bias"] = ((d + conv_dim + nh,), ("zeros",))
            out[m + "out_proj.bias"] = ((H,), ("zeros",))
        if i in hyb:
            out[f"model.layers.{i}.linear.weight"] = ((H, H), ("normal", H ** -0.5))
    nmb, r = int(cfg.num_mem_blocks), int(cfg.adapter_rank)
    for b, lid in enumerate(hyb[:nmb]):
        s = f"model.layers.{lid}.shared_transformer."
        out[s + "input_layernorm.weight"] = ((A2,), ("ones",))
        out[s + "pre_ff_layernorm.weight"] = ((H,), ("ones",))
        for name, rows in (("q", nq * hda), ("k", nkv * hda), ("v", nkv * hda)):
            out[s + f"self_attn.{name}_proj.weight"] = ((rows, A2), ("normal", A2 ** -0.5))
        out[s + "self_attn.o_proj.weight"] = ((H, nq * hda), ("normal", (nq * hda) ** -0.5))
        out[s + "feed_forward.gate_up_proj.weight"] = ((2 * inter, H), ("normal", H ** -0.5))
        out[s + "feed_forward.down_proj.weight"] = ((H, inter), ("normal", inter ** -0.5))
        if bias:
            out[s + "feed_forward.gate_up_proj.bias"] = ((2 * inter,), ("zeros",))
            out[s + "feed_forward.down_proj.bias"] = ((H,), ("zeros",))
        for j in range(len(hyb)):
            if j % nmb != b:
                continue
            a = s + f"feed_forward.gate_up_proj_adapter_list.{j}."
            out[a + "0.weight"] = ((r, H), ("normal", H ** -0.5))
            out[a + "1.weight"] = ((2 * inter, r), ("normal", 0.02))
            if cfg.use_shared_attention_adapter:
                for name, rows in (("q", nq * hda), ("k", nkv * hda), ("v", nkv * hda)):
                    a = s + f"self_attn.linear_{name}_adapter_list.{j}."
                    out[a + "0.weight"] = ((r, A2), ("normal", A2 ** -0.5))
                    out[a + "1.weight"] = ((rows, r), ("normal", 0.02))
    return out


_SPECS = {"zamba": zamba_tensor_specs, "zamba2": zamba2_tensor_specs}


class PresetSource:
    """Weight source for a preset: random tensors generated per slice on the device that asks (see RandomTensor)."""

    def __init__(self, name: str, seed: int = 0):
        self.name = name
        self.config = preset_config(name)
        self.family = preset_entry(name)[0]
        self.prefix = "backbone." if self.family in ("mamba", "falcon_mamba") else "model."
        self.seed = seed
        self.tokenizer = ByteTokenizer() if name.startswith("tiny") else None
        self._specs = (mamba_tensor_specs(self.config) if self.family in ("mamba", "falcon_mamba")
                       else _SPECS[self.family](self.config))

    def _get(self, name: str, device) -> RandomTensor:
        if name not in self._specs:
            raise KeyError(f"preset {self.name}: no tensor {name!r}")
        shape, init = self._specs[name]
        return RandomTensor(name, shape, init, self.seed, device)

    def has(self, name: str) -> bool:
        return name in self._specs

    def tensor(self, name, dtype, device) -> torch.Tensor:
        return self._get(name, device).full().to(dtype)

    def getter(self, prefix, dtype, device):
        from .loading import _Cast

        return lambda name: _Cast(self._get(prefix + name, device), dtype, device)

    def num_params(self) -> int:
        n = 0
        for shape, _ in self._specs.values():
            n += math.prod(shape)
        return n


def save_preset(name: str, path: str, seed: int = 0, dtype: Optional[torch.dtype] = None) -> None:
    """Write a preset as an HF-format directory (config.json + model.safetensors), e.g. to test loading."""
    from safetensors.torch import save_file

    src = PresetSource(name, seed)
    os.makedirs(path, exist_ok=True)
    dtype = dtype or torch.float32
    tensors = {k: src.tensor(k, dtype, "cpu").contiguous() for k in src._specs}
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    preset_config(name, hf=True).save_pretrained(path)
