"""CUDA graph capture for the GPU tests: fn run once on a side stream (warm-up: allocator, lazy init), then captured."""
import torch


def capture(fn):
    """Warm fn up on a side stream, then capture one call of it; returns (graph, what the captured call returned)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    return g, out
