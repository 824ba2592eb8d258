"""benchmarks/report.py on small fixture result files: the README section it writes between the markers, its
idempotence (--check), the migration of an unmarked section, and the TP2/TP1 ratios and targets (CPU, no torch)."""
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("report", os.path.join(ROOT, "benchmarks", "report.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _meta(tp, **kw):
    return dict(commit="0123456789abcdef0123456789abcdef01234567", date=f"2026-11-2{tp}T10:00:00+00:00",
                device="NVIDIA H200", tp=tp, dtype="bfloat16", **kw)


def _case(model, b, p, o, gen, step=3.0):
    return dict(label=f"{model} B={b} prompt={p} out={o}", model=model, batch=b, prompt=p, output=o, status="ok",
                req_s=gen / o, gen_tok_s=gen, prefill_tok_s=50000.0, prefill_over_floor=2.0, decode_step_ms=step,
                decode_over_floor=2.5, e2e_over_floor=3.0)


def _fixtures(folder):
    engine = lambda tp, s: {  # noqa: E731
        "meta": _meta(tp, model="mamba-2.8b"),
        "decode": {"1": {"graph_step_ms": s, "engine_step_ms": s + 0.1, "over_floor": 2.4}},
        "prefill": {"1x512": {"tok_s": 50000.0 * tp, "over_floor": 2.8}},
        "ttft": {"prompt_len": 8192, "cold_no_prefix_cache_s": 0.1, "hit_s": 0.02, "hit_cached_tokens": 7373},
        "hf": {"prefill_tok_s": 290.0, "decode_step_ms": 47.6},
        "reference_not_this_run": {"mamba_ssm_cuda_graphs": {"decode_step_ms": {"1": 4.72},
                                                             "prefill_tok_s": {"1x512": 9688}}}}
    thr = lambda tp, k: {  # noqa: E731
        "meta": _meta(tp), "validation": {"mamba": {"status": "ok", "model": "tiny"}},
        "models": {"mamba-2.8b": {"status": "ok"}, "zamba-7b": {"status": "skipped", "reason": "not yet supported"}},
        "cases": [_case("mamba-2.8b", 1, 512, 32, 300.0 * k), _case("mamba-2.8b", 64, 512, 128, 10000.0 * k),
                  dict(label="zamba-7b B=64 prompt=512 out=128", model="zamba-7b", batch=64, prompt=512, output=128,
                       status="skipped", reason="not yet supported")],
        **({"hf": {"model": "mamba-2.8b", "transformers": "5.17", "kernels": "pure torch",
                   "cases": [dict(label="mamba-2.8b B=1 prompt=512 out=32", batch=1, prompt=512, output=32,
                                  status="ok", gen_tok_s=5.0, decode_step_ms=47.0, prefill_tok_s=290.0,
                                  engine_gen_tok_s=300.0, engine_over_hf=60.0)]}} if tp == 1 else {})}
    abl = {"meta": _meta(2, model="mamba-2.8b", backends=["auto", "quant-int8"], baseline="auto", quant_block=32),
           "workloads": {"prefill": "32x2048"}, "validation": {"quant-int8": {"tokens_equal": True}},
           "results": [dict(backend="auto", workload="prefill", status="ok", tok_s=100000.0, change_vs_baseline=0.0),
                       dict(backend="quant-int8", workload="prefill", status="ok", tok_s=115000.0,
                            change_vs_baseline=0.15)],
           "targets": [dict(target="quant-int8 >= +10%", ok=True, detail="prefill +15.0%")]}
    acc = {"meta": dict(commit="ae62dee8d255857b396496c85f549f7a6dfe7cc0", date="2026-11-22T21:41:29Z",
                        device="cpu", checkpoint="ssmtp/data/tiny-mamba-bytes", windows=32, length=256),
           "results": {"reference (unsharded fp32, HF)": {"ppl": 3.1715, "top1_agreement": 1.0},
                       "tp=2 bf16-cast": {"ppl": 3.1716, "top1_agreement": 0.9994},
                       "tp=2 int8-b32": {"ppl": 3.1716, "top1_agreement": 0.9973}}}
    M = 1 << 20
    ar_rows = [dict(backend=b, mode="graph", bytes=n, us=us) for b, n, us in (
        ("custom-lamport", 4096, 3.6), ("custom-1shot", 4096, 5.7), ("nccl", 4096, 10.1),
        ("nccl", 16 * M, 76.0), ("custom-1shot", 16 * M, 69.0), ("custom-2shot", 16 * M, 60.8),
        ("q-int8-b32-2shot", 16 * M, 42.2), ("q-int8-b128-2shot", 16 * M, 42.0),
        ("nccl", 256 * M, 894.0), ("custom-2shot", 256 * M, 876.5), ("q-int8-b32-2shot", 256 * M, 584.3))]
    ar = {"meta": _meta(2), "results": ar_rows,
          "quant_error": [dict(qdtype="int8", block=32, bytes=M, rel_err_global=0.0077)],
          "nvlink_probe": {"copy_both_GBs": 360.2, "ce_both_GBs": 386.4},
          "floors": [dict(bytes=256 * M, floor_us=694.7, custom_x_floor=1.26, nccl_x_floor=1.29)]}
    files = {"engine-x-tp1.json": engine(1, 3.16), "engine-x-tp2.json": engine(2, 3.09), "allreduce-x.json": ar,
             "throughput-x-tp1.json": thr(1, 1.0), "throughput-x-tp2.json": thr(2, 1.95),
             "quant-ablation-x-tp2.json": abl, "accuracy-x.json": acc}
    for name, d in files.items():
        with open(os.path.join(folder, name), "w") as f:
            json.dump(d, f)


def _render(report, res, tmp_path) -> str:
    """report.py's README text for the result files in res (a fresh README.md under tmp_path)."""
    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    assert report.main(["--results", str(res), "--readme", str(readme)]) == 0
    return readme.read_text()


def test_report_writes_the_marked_section_and_is_idempotent(report, tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    _fixtures(str(res))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nintro\n\n## Performance (old)\n\nold table\n\n## Trust\n\nkept\n")
    args = ["--results", str(res), "--readme", str(readme)]
    assert report.main(args) == 0
    text = readme.read_text()
    assert text.startswith("# x\n\nintro\n\n" + report.BEGIN) and text.endswith("## Trust\n\nkept\n")
    assert "old table" not in text and text.count(report.BEGIN) == 1 and text.count(report.END) == 1
    sec = text[text.index(report.BEGIN):text.index(report.END)]
    for want in ("`engine-x-tp1.json` (commit 0123456, 2026-11-21, NVIDIA H200)", "| decode step B=1 | 3.16 ms",
                 "| prefill 1x512 | 50.0k tok/s | 100k tok/s | 2.00x", "**1.95x**", "**60x**",
                 "skipped: not yet supported", "met (min 1.95x over 1 cases)", "met (min 1.95x over 2 cases)",
                 "115k tok/s (+15.0%)",
                 "ppl 3.1716, top-1 99.73%", "| int8, block 32 | 3.1716 | 99.73% |",
                 "custom lamport one-shot all-reduce 3.6 us for <= 64 KiB",
                 "int8 block-32 quantized all-reduce 1.80x NCCL at 16 MiB with 0.77% relative error",
                 "16 MiB: exact 1.25x, int8 (block 32 or 128) 1.81x; 256 MiB: exact 1.02x, int8 (block 32 or 128) 1.53x",
                 "NVLink measured 360 GB/s each way by SM copies (386 by copy engines)",
                 "at 256 MiB the exact custom all-reduce takes 1.26x and NCCL 1.29x"):
        assert want in sec, want
    assert report.main(args + ["--check"]) == 0
    readme.write_text(text.replace("3.16 ms", "9.99 ms"))
    assert report.main(args + ["--check"]) == 1
    assert report.main(args) == 0 and readme.read_text() == text


def test_engine_ratios_only_within_one_commit_and_no_negative_hf(report, tmp_path):
    """The engine table's TP=2 / TP=1 column is left empty (with a note) when the two files come from different
    commits, and a non-positive HF decode timing is not printed."""
    res = tmp_path / "results"
    res.mkdir()
    _fixtures(str(res))
    p2 = res / "engine-x-tp2.json"
    d2 = json.loads(p2.read_text())
    d2["meta"]["commit"] = "fedcba9876543210fedcba9876543210fedcba98"
    p2.write_text(json.dumps(d2))
    p1 = res / "engine-x-tp1.json"
    d1 = json.loads(p1.read_text())
    d1["hf"]["decode_step_ms"] = -118.5
    p1.write_text(json.dumps(d1))
    sec = _render(report, res, tmp_path)
    assert "left out: the TP=1 and TP=2 files come from different commits (0123456, fedcba9)" in sec
    assert "| prefill 1x512 | 50.0k tok/s | 100k tok/s |  |" in sec
    assert "-118" not in sec


def test_engine_hf_column_from_an_earlier_run(report, tmp_path):
    """A TP=1 engine run without HF (--no-hf) takes the HF column from the newest earlier TP=1 file of the same model
    that ran it, and names that file; with no such file the column stays empty."""
    res = tmp_path / "results"
    res.mkdir()
    _fixtures(str(res))
    old = json.loads((res / "engine-x-tp1.json").read_text())
    (res / "engine-old-tp1.json").write_text(json.dumps(old))
    new = json.loads((res / "engine-x-tp1.json").read_text())
    del new["hf"]
    new["meta"]["date"] = "2026-11-25T10:00:00+00:00"
    new["meta"]["commit"] = "abcdef0123456789abcdef0123456789abcdef01"
    (res / "engine-y-tp1.json").write_text(json.dumps(new))
    sec = _render(report, res, tmp_path)
    assert "`engine-y-tp1.json` (commit abcdef0, 2026-11-25, NVIDIA H200)" in sec
    assert "HF transformers figures: `engine-old-tp1.json` (commit 0123456, 2026-11-21, NVIDIA H200)" in sec
    assert "| decode step B=1 | 3.16 ms |  |  | 2.40 | 4.72 ms | 47.6 ms |" in sec
    old["meta"]["model"] = "falcon-mamba-7b"
    (res / "engine-old-tp1.json").write_text(json.dumps(old))
    del old["hf"]
    (res / "engine-x-tp1.json").write_text(json.dumps(old))
    sec = _render(report, res, tmp_path)
    assert "HF transformers figures" not in sec and "47.6 ms" not in sec


def test_compare_throughput_targets(report):
    a = {"meta": _meta(1), "cases": [_case("m", 64, 512, 128, 100.0), _case("m", 1, 512, 128, 10.0)]}
    b = {"meta": _meta(2), "cases": [_case("m", 64, 512, 128, 195.0), _case("m", 1, 512, 128, 9.0)]}
    c = report.compare_throughput(a, b)
    assert [round(r["ratio"], 3) for r in c["cases"]] == [1.95, 0.9]
    assert [t["ok"] for t in c["targets"]] == [True, False]


def test_sampling_section(report, tmp_path):
    """bench_sample.py rows (the first model in full, the other as a range of ratios) and the engine's greedy vs
    sampled decode steps; without either file there is no section."""
    res = tmp_path / "results"
    res.mkdir()
    _fixtures(str(res))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    assert report.main(["--results", str(res), "--readme", str(readme)]) == 0
    assert "Token sampling" not in readme.read_text()
    row = lambda model, V, n, s, g, e, so: dict(  # noqa: E731
        model=model, V=V, n=n, setting=s, cuda_vs_cpu_agreement=1.0, floor_us=1.0, ssmtp_us=e, ssmtp_graph_us=g,
        sort_us=so, hf_us=300.0, argmax_us=20.0)
    sample = {"meta": dict(git_commit="0a8a888", date="2026-11-24T01:47:38+00:00", device="NVIDIA H200",
                           logits="fp32 randn * 3"),
              "rows": [row("mamba-2.8b", 50280, 1, "greedy", 10.0, 48.0, 44.0),
                       row("mamba-2.8b", 50280, 1, "top-k 50", 46.0, 78.0, 1182.0),
                       row("falcon-mamba-7b", 65024, 1, "top-k 50", 48.0, 80.0, 400.0),
                       row("falcon-mamba-7b", 65024, 8, "top-p 0.95", 70.0, 100.0, 1000.0)]}
    (res / "sample-h200.json").write_text(json.dumps(sample))
    p1 = res / "engine-x-tp1.json"
    d1 = json.loads(p1.read_text())
    d1["decode"]["1"]["engine_sampled_step_ms"] = 3.36
    d1["meta"]["decode_sampling"] = {"temperature": 0.8, "top_k": 50, "top_p": 0.95}
    p1.write_text(json.dumps(d1))
    assert report.main(["--results", str(res), "--readme", str(readme)]) == 0
    sec = readme.read_text()
    assert "### Token sampling" in sec and "`sample-h200.json` (commit 0a8a888, 2026-11-24, NVIDIA H200)" in sec
    assert "| 1 | top-k 50 | 46 us | 78 us | 1182 us | 300 us | **15x** | 3.8x |" in sec
    assert "| 1 | greedy |" not in sec
    assert "falcon-mamba-7b (V=65024): sort / ssmtp 5.0-10.0x" in sec
    assert "greedy vs temperature 0.8, top-k 50, top-p 0.95" in sec and "| 1 | 3.260 ms | 3.360 ms | 1.031 |" in sec


def test_readme_section_matches_the_committed_results(report, tmp_path):
    """The README's performance section is what report.py makes of benchmarks/results/ (the real files), and a JSON
    file there that is not a results file (a list) is passed over instead of stopping the report."""
    assert report.main(["--check"]) == 0, "README.md is out of date: run python benchmarks/report.py"
    res = tmp_path / "results"
    res.mkdir()
    _fixtures(str(res))
    (res / "sample-extra.json").write_text(json.dumps([{"V": 1}]))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    assert report.main(["--results", str(res), "--readme", str(readme)]) == 0


def test_newest_skips_files_without_the_needed_key(report, tmp_path):
    """A bench_ops run filtered to its side benchmarks (no op cases) is newer but is not the ops table's source."""
    full = tmp_path / "ops-h200.json"
    full.write_text(json.dumps(dict(meta=_meta(4), cases=[dict(label="x")])))
    side = tmp_path / "ops-side-h200.json"
    side.write_text(json.dumps(dict(meta=_meta(5), cases=[], dtp_shapes=[dict(label="y")])))
    paths = [str(full), str(side)]
    assert report._newest(paths)[0] == str(side)
    assert report._newest(paths, need="cases")[0] == str(full)
