"""The swap table and ``parallelize``: HF module class -> (ssmtp TP module factory), applied in place.

Adding a family means adding rows here (and its module file), not a new patch function.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from ..parallel.comm import Communicator, get_communicator

log = logging.getLogger("ssmtp")

# HF class name -> (module path, factory(hf_module, comm) -> nn.Module)
_SWAPS: dict[str, tuple[str, Callable[[nn.Module, Communicator], nn.Module]]] = {}
# top-level HF model classes that parallelize() accepts
_MODELS: set[str] = set()


def register(hf_class: str, hf_module: str, factory: Callable[[nn.Module, Communicator], nn.Module]) -> None:
    _SWAPS[hf_class] = (hf_module, factory)


def _mamba_factory(falcon: bool):
    def make(m: nn.Module, comm: Communicator) -> nn.Module:
        from .mamba import TPMambaMixer

        return TPMambaMixer.from_hf(m, comm, falcon=falcon)

    return make


register("MambaMixer", "transformers.models.mamba.modeling_mamba", _mamba_factory(False))
register("FalconMambaMixer", "transformers.models.falcon_mamba.modeling_falcon_mamba", _mamba_factory(True))
_MODELS.update({"MambaForCausalLM", "MambaModel", "FalconMambaForCausalLM", "FalconMambaModel"})


def _zamba_factory(kind: str):
    def make(m: nn.Module, comm: Communicator) -> nn.Module:
        from . import zamba

        if kind == "mixer":
            return zamba.TPZambaMambaMixer.from_hf(m, comm)
        if kind == "attention":
            return zamba.TPZambaAttention.from_hf(m, comm)
        return zamba.zamba_mlp_from_hf(m, comm)

    return make


_ZAMBA = "transformers.models.zamba.modeling_zamba"
register("ZambaMambaMixer", _ZAMBA, _zamba_factory("mixer"))
register("ZambaAttention", _ZAMBA, _zamba_factory("attention"))
register("ZambaMLP", _ZAMBA, _zamba_factory("mlp"))
_MODELS.update({"ZambaForCausalLM", "ZambaModel"})


def _zamba2_factory(kind: str):
    def make(m: nn.Module, comm: Communicator) -> nn.Module:
        from . import zamba2

        cls = {"mixer": zamba2.TPZamba2MambaMixer, "attention": zamba2.TPZamba2Attention, "mlp": zamba2.TPZamba2MLP}
        return cls[kind].from_hf(m, comm)

    return make


_ZAMBA2 = "transformers.models.zamba2.modeling_zamba2"
register("Zamba2MambaMixer", _ZAMBA2, _zamba2_factory("mixer"))
register("Zamba2Attention", _ZAMBA2, _zamba2_factory("attention"))
register("Zamba2MLP", _ZAMBA2, _zamba2_factory("mlp"))
_MODELS.update({"Zamba2ForCausalLM", "Zamba2Model"})


def supported_classes() -> list[str]:
    return sorted(_MODELS)


def _check_same_everywhere(model: nn.Module, comm: Communicator) -> None:
    """Start-up check that every rank holds the same model (class, config, weights' checksum): a mismatch would
    otherwise silently give wrong tokens."""
    if comm.world_size == 1:
        return
    h = hashlib.sha256(type(model).__name__.encode())
    cfg = getattr(model, "config", None)
    if cfg is not None:
        h.update(cfg.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(name.encode())
            h.update(str(p.dtype).encode())
            h.update(repr(float(p.detach().float().sum())).encode())
    mine = h.hexdigest()
    everyone: list = [None] * comm.world_size
    dist.all_gather_object(everyone, mine, group=comm.group)
    bad = [i for i, d in enumerate(everyone) if d != everyone[0]]
    if bad:
        raise ValueError(f"ssmtp.parallelize: ranks {bad} hold a different model than rank 0 (class, config or "
                         f"weights differ); load the same checkpoint (or seed) on every rank")


def parallelize(model: nn.Module, group: Optional["dist.ProcessGroup"] = None, *, check: bool = True,
                comm: Optional[Communicator] = None) -> nn.Module:
    """Replace the supported modules of an HF model in place with tensor-parallel shards and return the model.

    Each rank must hold the full model (same weights) on entry; it keeps only its slices of the mixer weights.
    ``group`` is the TP process group (None: the default group, or a single process when torch.distributed is not
    initialised). ``model(...)`` and ``model.generate(...)`` keep working with HF's own cache object.
    """
    cls = type(model).__name__
    if cls not in _MODELS:
        raise TypeError(f"ssmtp.parallelize: {cls} is not supported; supported models: {', '.join(supported_classes())}")
    comm = comm or get_communicator(group)
    if check:
        _check_same_everywhere(model, comm)
    swapped = 0
    # A module shared by several parents is sharded once; so are distinct modules holding the very same Parameters
    # (HF ties Zamba's shared block across hybrid layers that way): one copy per rank, not one per use.
    done: dict[tuple, nn.Module] = {}
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            entry = _SWAPS.get(type(child).__name__)
            if entry is None or not type(child).__module__.startswith(entry[0]):
                continue
            key = (type(child).__name__, tuple(id(p) for p in child.parameters()) or (id(child),))
            if key not in done:
                done[key] = entry[1](child, comm)
                swapped += 1
            setattr(parent, child_name, done[key])
    if swapped == 0:
        raise TypeError(f"ssmtp.parallelize: found no supported module inside {cls}; "
                        f"swappable: {', '.join(sorted(_SWAPS))}")
    model._ssmtp_comm = comm
    log.info("ssmtp.parallelize: %s, %d modules swapped, tp=%d rank=%d", cls, swapped, comm.world_size, comm.rank)
    return model
