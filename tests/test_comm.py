"""The communicator on CPU (gloo, 2 and 4 spawned ranks): the torch backend sums; the quantized all-reduce (gather
path) equals the single-process oracle bit for bit, stays within the error bound derived from the block math, keeps
exact zeros, turns only the blocks holding Inf/NaN into NaN, and gives every rank the same bits; bad arguments raise
ValueError."""
import os

import pytest
import torch
import torch.distributed as dist

import ssmtp  # noqa: F401  (registers the ops)
from distributed import run_ranks as _run_ranks
from ssmtp.parallel import comm as comm_mod
from ssmtp.parallel.comm import Communicator, get_communicator
from ssmtp.parallel.quant_ar import check_quant_args, error_bound, quant_all_reduce_gather, quant_reduce_reference


# The first call of a torch.library op costs seconds (torch imports its dispatch machinery lazily); pay it once here,
# in the module the forkserver below preloads, instead of once per rank.
ssmtp.ops.dequantize_blocks(*ssmtp.ops.quantize_blocks(torch.ones(32), 32, "int8"), 32, torch.float32)


def run_ranks(world, fn, timeout=60.0):
    """Ranks forked from a forkserver that imported torch and ssmtp once."""
    _run_ranks(world, fn, timeout=timeout, preload=["ssmtp", __name__])


def _inputs(world, n, dtype, seed):
    """Every rank's input (each rank can rebuild all of them). Heavy-tailed values so that block scales differ."""
    xs = []
    for r in range(world):
        g = torch.Generator().manual_seed(seed * 100 + r)
        x = torch.randn(n, generator=g) * torch.rand(n, generator=g).pow(3) * (r + 1)
        xs.append(x.to(dtype))
    return xs


def _bits(t):
    return t.contiguous().view(torch.int32 if t.element_size() == 4 else torch.int16)


def _same(a, b):
    """Bitwise equal, any NaN matching any NaN."""
    na, nb = torch.isnan(a), torch.isnan(b)
    return bool(torch.equal(na, nb) and torch.equal(_bits(a[~na]), _bits(b[~nb])))


def _torch_checks(rank, world):
    c = Communicator()
    assert (c.rank, c.world_size) == (rank, world)
    for n, dtype in ((1, torch.float32), (1000, torch.float32), (4099, torch.bfloat16), (37, torch.float64)):
        xs = _inputs(world, n, dtype, seed=n)
        t = xs[rank].clone()
        assert c.backend_for(t) == "torch"
        out = c.all_reduce(t)
        assert out is t
        ref = sum(x.double() for x in xs)
        # gloo's summation order is its own: allow a few ulps of the dtype per rank
        eps = {torch.float32: 2e-7, torch.bfloat16: 8e-3, torch.float64: 1e-15}[dtype]
        tol = eps * world * sum(x.double().abs() for x in xs) + 1e-30
        assert ((out.double() - ref).abs() <= tol).all(), f"n={n} {dtype}"
    # an integer tensor is summed exactly
    ti = torch.full((5,), rank + 1, dtype=torch.int64)
    assert c.all_reduce(ti).tolist() == [world * (world + 1) // 2] * 5
    # one communicator per group
    assert get_communicator() is get_communicator()
    comm_mod.shutdown()


@pytest.mark.parametrize("world", [2, 4])
def test_torch_backend_sums(world):
    run_ranks(world, _torch_checks)


def _quant_checks(rank, world):
    os.environ["SSMTP_ALLREDUCE"] = "quant-int8"  # the env var selects the quantized path...
    c_env = Communicator()
    assert c_env.quant == "int8" and c_env.quant_block == 32
    assert c_env.backend_for(torch.zeros(8)) == "quant-int8"
    del os.environ["SSMTP_ALLREDUCE"]
    # below the measured crossover (thresholds' quant_min_bytes, or SSMTP_QUANT_MIN_BYTES) messages are summed exactly
    table = {"world_sizes": {str(world): {"rules": [{"max_bytes": None, "backend": "nccl"}],
                                          "quant_min_bytes": 4096}}}
    cm = Communicator(quant="int8", thresholds=table)
    assert cm._quant_min == 4096
    small, big = _inputs(world, 1000, torch.float32, seed=7), _inputs(world, 1024, torch.float32, seed=8)
    assert cm.backend_for(small[rank]) == "torch" and cm.backend_for(big[rank]) == "quant-int8"
    ref = small[rank].clone()
    dist.all_reduce(ref)
    assert torch.equal(cm.all_reduce(small[rank].clone()), ref)  # 4000 bytes: the exact (unquantized) sum
    assert _same(cm.all_reduce(big[rank].clone()), quant_reduce_reference(big, "int8", 32))  # 4096 bytes: quantized
    os.environ["SSMTP_QUANT_MIN_BYTES"] = "0"  # the override: quantize everything
    assert Communicator(quant="int8", thresholds=table).backend_for(small[rank]) == "quant-int8"
    os.environ["SSMTP_QUANT_MIN_BYTES"] = "lots"
    with pytest.raises(ValueError, match="SSMTP_QUANT_MIN_BYTES"):
        Communicator(quant="int8", thresholds=table)
    del os.environ["SSMTP_QUANT_MIN_BYTES"]
    # every qdtype x block x dtype pairing once (the GPU tests sweep the full product)
    for qdtype, block, dtype in (("int8", 32, torch.bfloat16), ("int8", 128, torch.float32),
                                 ("fp8", 32, torch.float32), ("fp8", 128, torch.bfloat16)):
        c = Communicator(quant=qdtype, quant_block=block)  # ...and so does the constructor
        for n in (1, 31, 1000, 4099):
            xs = _inputs(world, n, dtype, seed=n + block)
            out = c.all_reduce(xs[rank].clone())
            ref = quant_reduce_reference(xs, qdtype, block)
            case = f"{qdtype} block={block} {dtype} n={n}"
            assert _same(out, ref), f"{case}: differs from the oracle"
            exact = sum(x.double() for x in xs)
            err = (out.double() - exact).abs()
            bound = error_bound(xs, qdtype, block)
            assert (err <= bound).all(), f"{case}: max err/bound {(err / bound).max():.3f}"
            rel, rel_bound = err.norm() / exact.norm(), bound.norm() / exact.norm()
            assert rel <= rel_bound, f"{case}: relative error {rel:.4f} > {rel_bound:.4f}"
            outs = [torch.empty_like(out) for _ in range(world)]
            dist.all_gather(outs, out)
            assert all(torch.equal(_bits(o), _bits(out)) for o in outs), f"{case}: ranks differ"

    # the gather-callable path (what the NCCL variant uses): one flat byte buffer, every rank's part in rank order
    def gather(x, out):
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x)
        out.copy_(torch.cat(parts))

    for n in (1, 33, 1001):  # payload sizes that are not multiples of 4 bytes
        xs = _inputs(world, n, torch.bfloat16, seed=3 * n)
        out = quant_all_reduce_gather(xs[rank].clone(), "fp8", 32, gather=gather)
        assert _same(out, quant_reduce_reference(xs, "fp8", 32)), f"gather callable n={n}"

    # exact zeros: a whole zero block on every rank, and zero elements shared by every rank inside live blocks
    n, block = 640, 32
    for qdtype in ("int8", "fp8"):
        xs = _inputs(world, n, torch.float32, seed=7)
        zero_idx = torch.tensor([0, 1, 100, 257, 639])
        for x in xs:
            x[64:96] = 0.0
            x[zero_idx] = 0.0
        out = quant_all_reduce_gather(xs[rank].clone(), qdtype, block)
        assert (out[64:96] == 0).all() and (out[zero_idx] == 0).all(), qdtype
        assert torch.isfinite(out).all()
        # Inf on rank 0 in block 3, NaN on the last rank in block 10: NaN in exactly those blocks
        xs = _inputs(world, n, torch.float32, seed=8)
        xs[0][3 * block + 5] = float("inf")
        xs[-1][10 * block + 31] = float("nan")
        out = quant_all_reduce_gather(xs[rank].clone(), qdtype, block)
        nan_blocks = torch.isnan(out).view(-1, block)
        assert nan_blocks[3].all() and nan_blocks[10].all(), qdtype
        others = torch.ones(n // block, dtype=torch.bool)
        others[[3, 10]] = False
        assert torch.isfinite(out.view(-1, block)[others]).all(), qdtype
        assert _same(out, quant_reduce_reference(xs, qdtype, block))


@pytest.mark.parametrize("world", [2, 4])
def test_quantized_gloo(world):
    run_ranks(world, _quant_checks)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        Communicator(quant="int4")
    with pytest.raises(ValueError):
        Communicator(quant="int8", quant_block=48)
    with pytest.raises(ValueError):
        Communicator(backend="bogus")
    for bad in (("int8", 16), ("int8", 512), ("int8", 96), ("fp16", 32), ("int8", True)):
        with pytest.raises(ValueError):
            check_quant_args(*bad)
    with pytest.raises(ValueError):
        check_quant_args("int8", 32, torch.int32)
    with pytest.raises(ValueError):
        quant_all_reduce_gather(torch.ones(64, dtype=torch.int32), "int8", 32)
    with pytest.raises(ValueError):
        quant_all_reduce_gather(torch.ones(64, 2).t(), "int8", 32)  # not contiguous
    with pytest.raises(ValueError):
        quant_reduce_reference([torch.ones(64, dtype=torch.float64)], "fp8", 32)


def test_world_size_one(caplog, monkeypatch):
    monkeypatch.delenv("SSMTP_ALLREDUCE", raising=False)
    assert not dist.is_initialized()
    c = Communicator()
    assert (c.rank, c.world_size) == (0, 1)
    t = torch.randn(10)
    keep = t.clone()
    assert c.all_reduce(t) is t and torch.equal(t, keep)
    cq = Communicator(quant="fp8", quant_block=64)
    assert cq.all_reduce(t) is t and torch.equal(t, keep)
    with pytest.raises(ValueError):
        Communicator(group=object())
    # a single-process quantized "all-reduce" is the quantize/dequantize round trip twice (the sum's requantization)
    x = torch.randn(300)
    out = quant_all_reduce_gather(x.clone(), "int8", 32)
    assert torch.equal(out, quant_reduce_reference([x], "int8", 32))
    c.close()
    cq.close()


def test_env_override_is_validated(monkeypatch):
    monkeypatch.setenv("SSMTP_ALLREDUCE", "fastest")
    with pytest.raises(ValueError, match="SSMTP_ALLREDUCE"):
        Communicator()
    monkeypatch.setenv("SSMTP_ALLREDUCE", "quant-fp8")
    c = Communicator(backend="torch")  # the environment overrides the argument
    assert c.quant == "fp8"


def test_thresholds_file_is_well_formed():
    table = comm_mod.load_thresholds()
    assert "measured" in table and table["measured"].get("when")
    for entry in list(table["world_sizes"].values()) + [table["default"]]:
        rules = entry["rules"]
        assert rules[-1]["max_bytes"] is None, "the last rule must cover every size"
        sizes = [r["max_bytes"] for r in rules[:-1]]
        assert sizes == sorted(sizes)
        for r in rules:
            assert r["backend"] in comm_mod.BACKENDS and not r["backend"].startswith("quant")
        for r in entry["quant_rules"]:
            assert r["algo"] in ("1shot", "2shot")
