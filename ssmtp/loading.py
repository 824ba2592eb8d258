"""Weight sources for the engine (design decision 9): where a rank's shard comes from, without the full model.

    resolve(spec) -> a source, from
      * an nn.Module (HF MambaForCausalLM / FalconMambaForCausalLM, parallelized or not)   HFModelSource
      * a preset name (ssmtp/presets.py: real shapes, random weights generated per shard)     presets.PresetSource
      * a local HF-format directory: config.json + *.safetensors (+ model.safetensors.index.json when sharded)
                                                                                               SafetensorsSource
      * a hub id ("org/name"), fetched with huggingface_hub.snapshot_download when online    SafetensorsSource

A source answers: config (the HF config), family (HF model_type), prefix ("backbone."), name, tokenizer (or None),
tensor(name, dtype, device) (a whole replicated tensor), has(name), and getter(prefix, dtype, device) -> get(name):
the weight getter TPMambaMixer takes, returning objects that can be sliced like the full tensor. For a safetensors
directory these are ``safe_open(...).get_slice(name)``: a rank reads only its rows/columns from disk.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Optional

import torch

log = logging.getLogger("ssmtp")

FAMILIES = ("mamba", "falcon_mamba", "zamba", "zamba2")


class _Cast:
    """A sliceable (tensor or safetensors slice) whose slices come back as ``dtype`` on ``device``."""

    def __init__(self, obj, dtype, device):
        self.obj, self.dtype, self.device = obj, dtype, device

    def __getitem__(self, idx):
        t = self.obj[idx]
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(t)
        return t.to(device=self.device, dtype=self.dtype)

    def get_shape(self):
        return list(self.obj.get_shape()) if hasattr(self.obj, "get_shape") else list(self.obj.shape)


def family_of(config) -> str:
    mt = getattr(config, "model_type", None)
    if mt not in FAMILIES:
        raise ValueError(f"model_type {mt!r} is not supported; supported: {', '.join(FAMILIES)}")
    return mt


class HFModelSource:
    """An instantiated HF model (weights in memory)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.config = model.config
        self.family = family_of(self.config)
        self.prefix = "backbone."
        self.name = type(model).__name__
        self.tokenizer = None
        self._params = dict(model.named_parameters())

    def has(self, name: str) -> bool:
        return name in self._params

    def tensor(self, name, dtype, device) -> torch.Tensor:
        return self._params[name].detach().to(device=device, dtype=dtype).clone()

    def getter(self, prefix, dtype, device):
        return lambda name: _Cast(self._params[prefix + name].detach(), dtype, device)


class SafetensorsSource:
    """A local HF-format checkpoint directory; tensors are read lazily, slices only where a rank needs a slice."""

    def __init__(self, path: str, name: Optional[str] = None):
        from transformers import AutoConfig

        self.path = path
        self.name = name or os.path.basename(os.path.normpath(path))
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"{path}: no config.json (expected an HF-format model directory)")
        self.config = AutoConfig.from_pretrained(path)
        self.family = family_of(self.config)
        self.prefix = "backbone."
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.isfile(index):
            with open(index) as f:
                self._where = {k: os.path.join(path, v) for k, v in json.load(f)["weight_map"].items()}
        else:
            files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
            if not files:
                bins = [f for f in os.listdir(path) if f.endswith(".bin")]
                hint = " (found PyTorch .bin files: re-save with safe_serialization)" if bins else ""
                raise FileNotFoundError(f"{path}: no *.safetensors files{hint}")
            from safetensors import safe_open

            self._where = {}
            for fn in files:
                with safe_open(os.path.join(path, fn), framework="pt") as f:
                    for k in f.keys():
                        self._where[k] = os.path.join(path, fn)
        # old Mamba checkpoints name the embedding "backbone.embedding.weight" (HF renames it on load)
        self._alias: dict = {}
        for k in list(self._where):
            new = k.replace(".embedding.", ".embeddings.")
            if new != k and new not in self._where:
                self._where[new] = self._where[k]
                self._alias[new] = k
        self._handles: dict = {}
        self.tokenizer = None
        from .presets import EMBEDDED, ByteTokenizer

        if os.path.realpath(path) == os.path.realpath(EMBEDDED):
            self.tokenizer = ByteTokenizer(offset=0)  # the embedded model reads raw UTF-8 bytes
        elif any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json",
                                                               "tokenizer.model")):
            try:
                from transformers import AutoTokenizer

                self.tokenizer = AutoTokenizer.from_pretrained(path)
            except Exception as e:  # a broken tokenizer must not stop id-based use; say why once
                log.warning("ssmtp: could not load the tokenizer in %s (%s); prompts must be token ids", path, e)

    def _open(self, name: str):
        from safetensors import safe_open

        if name not in self._where:
            raise KeyError(f"{self.path}: tensor {name!r} not found in the checkpoint")
        fn = self._where[name]
        if fn not in self._handles:
            self._handles[fn] = safe_open(fn, framework="pt", device="cpu")
        return self._handles[fn], self._alias.get(name, name)

    def has(self, name: str) -> bool:
        return name in self._where

    def tensor(self, name, dtype, device) -> torch.Tensor:
        h, real = self._open(name)
        # copy=True: a fresh (allocator-aligned) tensor; the reader's buffer may be unaligned, which sends CPU GEMMs
        # down a different path and changes the last bits of the results
        return h.get_tensor(real).to(device=device, dtype=dtype, copy=True)

    def getter(self, prefix, dtype, device):
        def get(name):
            h, real = self._open(prefix + name)
            return _Cast(h.get_slice(real), dtype, device)

        return get


def _download(repo_id: str) -> str:
    """snapshot_download on one process per host first (the others then read the local copy)."""
    import torch.distributed as dist

    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError(f"{repo_id!r} is not a preset or a local directory, and huggingface_hub is not installed "
                         f"to fetch it from the hub") from None
    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]
    multi = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    path = None
    err = None
    if not multi or local_rank == 0:
        try:
            path = snapshot_download(repo_id, allow_patterns=patterns)
        except Exception as e:  # offline, unknown repo, gated ...
            err = e
    if multi:
        dist.barrier()
        if local_rank != 0:
            try:
                path = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
            except Exception as e:
                err = e
    if path is None:
        from .presets import PRESETS

        raise ValueError(f"model {repo_id!r}: not a preset ({', '.join(PRESETS)}), not a local directory, and the "
                         f"hub download failed: {err}") from err
    return path


def resolve(spec, *, device=None):
    """A weight source for ``spec`` (see the module docstring)."""
    from .presets import PRESETS, PresetSource, preset_entry

    if isinstance(spec, torch.nn.Module):
        return HFModelSource(spec)
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"model must be an HF model, a preset name, a directory or a hub id; got {spec!r}")
    if preset_entry(spec) is not None:
        return PresetSource(spec)
    if os.path.isdir(spec):
        return SafetensorsSource(spec)
    if os.path.exists(spec):
        raise ValueError(f"model path {spec!r} is not a directory (expected config.json + *.safetensors inside)")
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return SafetensorsSource(_download(spec), name=spec)
    raise ValueError(f"model {spec!r}: not a preset ({', '.join(PRESETS)}), a local directory or a hub id")
