"""Regenerate the README's performance section from the JSON files in benchmarks/results/.

    python benchmarks/report.py                 # rewrite README.md between <!-- bench:begin --> and <!-- bench:end -->
    python benchmarks/report.py --check         # exit 1 when the README section differs from the JSON files
    python benchmarks/report.py --print         # print the section only

Inputs (the newest file of each kind by its meta date; a kind with no file is left out):
  engine-*-tp1.json + engine-*-tp2.json        benchmarks/bench_engine.py
  throughput-*-tp1.json + throughput-*-tp2.json  benchmarks/bench_throughput.py (TP2/TP1 ratios computed here)
  quant-ablation-*.json                         benchmarks/bench_quant_ablation.py
  ops-*.json                                    benchmarks/bench_ops.py
  allreduce-*.json                              benchmarks/bench_allreduce.py
  accuracy-*.json                               benchmarks/eval_accuracy.py
  sample-*.json                                 benchmarks/bench_sample.py (+ the engine file's sampled decode steps)
Every table names its files with commit, date and device. Plain Python (no torch): it also runs in CI.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
TP_TARGET_B64 = 1.9  # TP2/TP1 generated tok/s at batch >= 64 (issue 7)
QUANT_TARGET = 0.10  # quantized all-reduce: end-to-end gain on prefill-heavy work vs the bf16 default


# ------------------------------------------------------------------------------------------------ loading

def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _meta(d: dict) -> dict:
    return d.get("meta", {})


def _date(d: dict) -> str:
    return str(_meta(d).get("date") or _meta(d).get("when") or "")


def _commit(d: dict) -> str:
    m = _meta(d)
    return str(m.get("commit") or m.get("git_commit") or "unknown")


def _newest(paths: list, need: str = "") -> tuple:
    """(path, data) of the file with the latest meta date; (None, None) when there is none. need: a key whose value
    must be non-empty (e.g. a bench_ops run filtered to its side benchmarks has no op cases)."""
    best = (None, None)
    for p in sorted(paths):
        try:
            d = _load(p)
        except (OSError, ValueError):
            continue
        if not isinstance(d, dict):  # an exploratory file whose name happens to match: not a results file
            continue
        if need and not d.get(need):
            continue
        if best[1] is None or _date(d) > _date(best[1]):
            best = (p, d)
    return best


def _pairs(results: str, kind: str) -> list:
    """Every (tp1, tp2) pair of `kind-*-tp{1,2}.json` with the same stem (either may be None), oldest first."""
    pairs = []
    for p1 in glob.glob(os.path.join(results, f"{kind}-*tp1.json")):
        p2 = p1[:-len("tp1.json")] + "tp2.json"
        d1 = _load(p1)
        d2 = _load(p2) if os.path.isfile(p2) else None
        pairs.append((_date(d1), p1, d1, p2 if d2 else None, d2))
    for p2 in glob.glob(os.path.join(results, f"{kind}-*tp2.json")):
        if not os.path.isfile(p2[:-len("tp2.json")] + "tp1.json"):
            d2 = _load(p2)
            pairs.append((_date(d2), None, None, p2, d2))
    return [x[1:] for x in sorted(pairs, key=lambda x: x[0])]


def _pair(results: str, kind: str) -> tuple:
    """The newest (tp1, tp2) pair of `kind-*-tp{1,2}.json` with the same stem; either may be None."""
    pairs = _pairs(results, kind)
    return pairs[-1] if pairs else (None, None, None, None)


def load_results(results: str) -> dict:
    r: dict = {}
    r["engine"] = _pair(results, "engine")
    r["engine_hf"] = engine_hf(results, r["engine"][1])
    r["throughput"] = _pairs(results, "throughput")
    r["ablation"] = _newest(glob.glob(os.path.join(results, "quant-ablation-*.json")))
    r["ops"] = _newest(glob.glob(os.path.join(results, "ops-*.json")), need="cases")
    r["allreduce"] = _newest(glob.glob(os.path.join(results, "allreduce-*.json")))
    r["accuracy"] = _newest(glob.glob(os.path.join(results, "accuracy-*.json")))
    r["sample"] = _newest(glob.glob(os.path.join(results, "sample-*.json")))
    return r


# ------------------------------------------------------------------------------------------------ formatting

def _src(path, d) -> str:
    """`file` (commit abc1234, 2026-11-22, device)"""
    if path is None:
        return ""
    m = _meta(d)
    dev = m.get("device", "?")
    if m.get("tp", 1) > 1 and "x" not in str(dev)[:3]:
        dev = f"{m['tp']}x {dev}"
    c = _commit(d)
    c = c[:7] if re.fullmatch(r"[0-9a-f]{40}", c) else c
    return f"`{os.path.basename(path)}` (commit {c}, {_date(d)[:10]}, {dev})"


def _tok(v) -> str:
    if v is None:
        return ""
    if v >= 1e5:
        return f"{v / 1e3:.0f}k"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    if v >= 10:
        return f"{v:.0f}"
    return f"{v:.2f}"


def _ms(v, nd=2) -> str:
    return "" if v is None else f"{v:.{nd}f} ms"


def _x(v, nd=2) -> str:
    return "" if v is None else f"{v:.{nd}f}"


def _pct(v, nd=1) -> str:
    return "" if v is None else f"{v * 100:+.{nd}f}%"


def _rel(path: str, readme_dir: str) -> str:
    return os.path.relpath(path, readme_dir).replace(os.sep, "/")


def _table(head: list, rows: list) -> list:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


# ------------------------------------------------------------------------------------------------ throughput ratios

def compare_throughput(a: dict, b: dict) -> dict:
    """Ratios of run b to run a (b = TP=2, a = TP=1) per case label, generated tok/s, and the issue's targets."""
    bl = {c["label"]: c for c in b.get("cases", [])}
    rows = []
    for c in a.get("cases", []):
        o = bl.get(c["label"])
        row = {k: c[k] for k in ("label", "model", "batch", "prompt", "output")}
        if o is None:
            row["note"] = "not in the second run"
        elif c.get("status") != "ok" or o.get("status") != "ok":
            row["note"] = f"{c.get('status')} / {o.get('status')}"
        else:
            row.update(a_gen_tok_s=c["gen_tok_s"], b_gen_tok_s=o["gen_tok_s"], ratio=o["gen_tok_s"] / c["gen_tok_s"],
                       a_decode_step_ms=c.get("decode_step_ms"), b_decode_step_ms=o.get("decode_step_ms"),
                       prefill_ratio=o["prefill_tok_s"] / c["prefill_tok_s"])
        rows.append(row)
    rated = [r for r in rows if r.get("ratio") is not None]
    big = [r for r in rated if r["batch"] >= 64]
    targets = [
        {"target": f"tp={_meta(b).get('tp')}/tp={_meta(a).get('tp')} >= {TP_TARGET_B64}x at batch >= 64",
         "ok": bool(big) and min(r["ratio"] for r in big) >= TP_TARGET_B64,
         "detail": (f"min {min(r['ratio'] for r in big):.2f}x over {len(big)} cases" if big else "no cases")},
        {"target": f"tp={_meta(b).get('tp')} never slower than tp={_meta(a).get('tp')}",
         "ok": bool(rated) and min(r["ratio"] for r in rated) >= 1.0,
         "detail": (f"min {min(r['ratio'] for r in rated):.2f}x over {len(rated)} cases" if rated else "no cases")},
    ]
    return {"a_tp": _meta(a).get("tp"), "b_tp": _meta(b).get("tp"), "a_commit": _commit(a), "b_commit": _commit(b),
            "a_date": _date(a), "b_date": _date(b), "device": _meta(b).get("device", "?"), "cases": rows,
            "targets": targets}


# ------------------------------------------------------------------------------------------------ sections

def _has_hf(d) -> bool:
    return isinstance(d, dict) and bool(d.get("hf")) and "error" not in d["hf"]


def engine_hf(results: str, d1) -> tuple:
    """Where the engine table's HF column comes from: the TP=1 file itself when it ran HF (--no-hf skips it), else
    the newest TP=1 engine file of the same model that did (named in the table). (path, data) or (None, None)."""
    if d1 is None or _has_hf(d1):
        return None, None
    same = []
    for p in glob.glob(os.path.join(results, "engine-*tp1.json")):
        try:
            d = _load(p)
        except (OSError, ValueError):
            continue
        if _has_hf(d) and _meta(d).get("model") == _meta(d1).get("model"):
            same.append(p)
    return _newest(same)


def engine_section(p1, d1, p2, d2, readme_dir, hf_src=(None, None)) -> list:
    if d1 is None:
        return []
    ref = d1.get("reference_not_this_run", {})
    ms = ref.get("mamba_ssm_cuda_graphs", {})
    hf_p, hf_d = hf_src
    hf = d1["hf"] if _has_hf(d1) else (hf_d["hf"] if _has_hf(hf_d) else {})
    out = [f"### Engine ({_meta(d1).get('model')}, {_meta(d1).get('dtype')})", "",
           "Sources: " + ", ".join(s for s in (_src(p1, d1), _src(p2, d2)) if s) + ". mamba_ssm figures: "
           "`shared/reference/measured-h200.md` (same GPU model, not this run)."
           + (f" HF transformers figures: {_src(hf_p, hf_d)} (this TP=1 run left HF out)." if hf and hf_d else ""),
           ""]
    # TP ratios only between runs of one commit (a TP=2 file from an older commit than the TP=1 file would set old
    # kernels against new ones); a non-positive HF timing (a difference of noisy timings) is not shown.
    same = d2 is not None and _commit(d1) == _commit(d2)
    if d2 is not None and not same:
        out += [f"TP=2 / TP=1 left out: the TP=1 and TP=2 files come from different commits ({_commit(d1)[:7]}, "
                f"{_commit(d2)[:7]}).", ""]
    hf_step = hf.get("decode_step_ms")
    hf_step = hf_step if hf_step and hf_step > 0 else None
    rows = []

    def step(d, b):
        x = (d or {}).get("decode", {}).get(b)
        return None if x is None else (x.get("graph_step_ms") or x.get("engine_step_ms"))

    for b, x in d1.get("decode", {}).items():
        s1, s2 = step(d1, b), step(d2, b)
        rows.append([f"decode step B={b}", _ms(s1), _ms(s2), _x(s2 / s1) if s1 and s2 and same else "",
                     _x(x.get("over_floor")), _ms(ms.get("decode_step_ms", {}).get(b)),
                     _ms(hf_step, 1) if b == "1" else ""])
    for c, x in d1.get("prefill", {}).items():
        y = (d2 or {}).get("prefill", {}).get(c)
        rows.append([f"prefill {c}", f"{_tok(x['tok_s'])} tok/s", f"{_tok(y['tok_s'])} tok/s" if y else "",
                     f"{y['tok_s'] / x['tok_s']:.2f}x" if y and same else "", _x(x.get("over_floor")),
                     f"{_tok(ms.get('prefill_tok_s', {}).get(c))} tok/s" if c in ms.get("prefill_tok_s", {}) else "",
                     f"{_tok(hf.get('prefill_tok_s'))} tok/s" if hf and c == "1x512" else ""])
    t1, t2 = d1.get("ttft"), (d2 or {}).get("ttft")
    if t1:
        rows.append([f"TTFT, {t1['prompt_len']}-token prompt, cold (prefix cache off)",
                     _ms(t1["cold_no_prefix_cache_s"] * 1e3, 0), _ms(t2["cold_no_prefix_cache_s"] * 1e3, 0) if t2
                     else "", "", "", "", ""])
        if "cold_s" in t1:
            rows.append([f"TTFT, {t1['prompt_len']}-token prompt, cold (prefix cache on: saves a state every "
                         f"{_meta(d1).get('prefix_interval', '?')} tokens)", _ms(t1["cold_s"] * 1e3, 0),
                         _ms(t2["cold_s"] * 1e3, 0) if t2 else "", "", "", "", ""])
        rows.append([f"TTFT, {t1['hit_cached_tokens']} of {t1['prompt_len']} tokens cached", _ms(t1["hit_s"] * 1e3, 1),
                     _ms(t2["hit_s"] * 1e3, 1) if t2 else "", "", "", "", ""])
        if "hit_over_cold_no_prefix_cache" in t1:
            rows.append(["TTFT hit / cold (cache off; cache on; target <= 0.15)",
                         f"{t1['hit_over_cold_no_prefix_cache']:.3f}; {t1['hit_over_cold']:.3f}",
                         f"{t2['hit_over_cold_no_prefix_cache']:.3f}; {t2['hit_over_cold']:.3f}" if t2 else "",
                         "", "", "", ""])
    tp2 = _meta(d2).get("tp", 2) if d2 else 2
    out += _table(["figure", "ssmtp TP=1", f"ssmtp TP={tp2}", f"TP={tp2} / TP=1", "TP=1 x floor",
                   "mamba_ssm (graphs), 1 GPU",
                   "HF transformers, 1 GPU" + ("" if hf_d else ", this run")], rows)
    out.append("")
    for p in (p1, p2):
        if p and os.path.isfile(p[:-5] + ".png"):
            out.append(f"![engine, {os.path.basename(p)[:-5]}]({_rel(p[:-5] + '.png', readme_dir)})")
    out.append("")
    return out


def throughput_section(p1, d1, p2, d2, readme_dir) -> list:
    if d1 is None and d2 is None:
        return []
    first = d1 or d2
    cmp = compare_throughput(d1, d2) if d1 and d2 else None
    ratios = {r["label"]: r.get("ratio") for r in cmp["cases"]} if cmp else {}
    by2 = {c["label"]: c for c in (d2 or {}).get("cases", [])}
    out = [f"### Batch-request throughput ({_meta(first).get('dtype')}, all requests submitted at once)", "",
           "Sources: " + ", ".join(s for s in (_src(p1, d1), _src(p2, d2)) if s) + ". Random weights with the real "
           "shapes; generated tok/s = batch x output / wall time; prefill tok/s = prompt tokens / time to the last "
           "first token; decode step from the request that started decoding last; `x fl.` = multiple of the physical "
           "floor (decode: weights + 2 x recurrent states + the K/V of the tokens held (hybrids) per step / 4.26 TB/s; prefill: 2 x params x tokens / (tp x 790 "
           "TFLOP/s)).", ""]
    for fam, v in first.get("validation", {}).items():
        if v.get("status") == "ok":
            out.append(f"Validation ({fam}): engine greedy tokens == HF transformers' on the `{v.get('model')}` "
                       f"config (fp32) at TP=1" + (" and TP=2." if d2 and d2.get("validation", {}).get(fam, {}).get(
                           "status") == "ok" else "."))
        else:
            out.append(f"Validation ({fam}): {v.get('status')} {v.get('reason') or v.get('error') or ''}".rstrip())
    out.append("")
    models = list(dict.fromkeys(list((d1 or {}).get("models", {})) + list((d2 or {}).get("models", {}))))
    tp2 = _meta(d2).get("tp", 2) if d2 else 2
    for m in models:
        rows = []
        for c in [c for c in (d1 or d2)["cases"] if c["model"] == m]:
            o = by2.get(c["label"]) if d1 else None
            if c.get("status") not in ("ok", "incomplete"):
                rows.append([f"B={c['batch']}, {c['prompt']} + {c['output']}",
                             f"{c.get('status')}: {c.get('reason') or c.get('error')}", "", "", "", "", "", ""])
                continue
            step = lambda x: (f"{x['decode_step_ms']:.2f} ({x['decode_over_floor']:.1f})"  # noqa: E731
                              if x and x.get("decode_step_ms") else "")
            ok2 = o is not None and o.get("status") == "ok"
            r = ratios.get(c["label"])
            rows.append([f"B={c['batch']}, {c['prompt']} + {c['output']}", _x(c["req_s"]), _tok(c["gen_tok_s"]),
                         f"{_tok(c['prefill_tok_s'])} ({c['prefill_over_floor']:.1f})", step(c),
                         _tok(o["gen_tok_s"]) if ok2 else (o or {}).get("status", ""), step(o) if ok2 else "",
                         f"**{r:.2f}x**" if r is not None else ""])
        info = (d1 or d2)["models"].get(m, {})
        why = info.get("reason") or info.get("error")
        note = "" if info.get("status") == "ok" else f" ({info.get('status')}: {why})"
        slots = [(t, d["models"][m].get("slots")) for t, d in ((1, d1), (tp2, d2))
                 if d and m in d.get("models", {}) and d["models"][m].get("slots")]
        big_b = max((c["batch"] for c in (d1 or d2).get("cases", []) if c.get("model") == m), default=0)
        if any(n < big_b for _, n in slots):  # the batch did not fit at once: requests queued for a slot
            note += (" (state slots that fit: " + ", ".join(f"TP={t} {n}" for t, n in slots)
                     + "; batches above that ran in waves)")
        out.append(f"{m}{note}:")
        out.append("")
        if rows:
            out += _table(["case (batch, prompt + output)", "TP=1 req/s", "TP=1 gen tok/s",
                           "TP=1 prefill tok/s (x fl.)", "TP=1 decode step ms (x fl.)", f"TP={tp2} gen tok/s",
                           f"TP={tp2} decode step ms (x fl.)", f"TP={tp2} / TP=1"], rows)
        out.append("")
    hf = (d1 or {}).get("hf")
    if hf:
        if hf.get("error"):
            out.append(f"HF transformers comparison: {hf['error']}")
        else:
            rows = [[f"B={c['batch']}, {c['prompt']} + {c['output']}", _tok(c.get("gen_tok_s")),
                     _ms(c.get("decode_step_ms"), 1), _tok(c.get("prefill_tok_s")), _tok(c.get("engine_gen_tok_s")),
                     f"**{c['engine_over_hf']:.{0 if c['engine_over_hf'] >= 10 else 1}f}x**"
                     if c.get("engine_over_hf") else c.get("error", "")]
                    for c in hf.get("cases", [])]
            where = "GPU" if _meta(d1).get("device") != "cpu" else "CPU process"
            out.append(f"HF transformers {hf.get('transformers', '')} ({hf.get('kernels', '?')} path), same "
                       f"{hf.get('model')} shapes, one {where}, same run as TP=1:")
            out.append("")
            out += _table(["case", "HF gen tok/s", "HF decode step", "HF prefill tok/s", "ssmtp TP=1 gen tok/s",
                           "ssmtp / HF"], rows)
        out.append("")
    if cmp:
        out.append("Targets: " + "; ".join(f"{t['target']}: {'met' if t['ok'] else 'missed'} ({t['detail']})"
                                          for t in cmp["targets"]) + ".")
        out.append("")
    for p in (p1, p2):
        if p and os.path.isfile(p[:-5] + ".png"):
            out.append(f"![throughput, {os.path.basename(p)[:-5]}]({_rel(p[:-5] + '.png', readme_dir)})")
    if p2:
        cp = p2[:-len("-tp2.json")] + "-compare.png"
        if os.path.isfile(cp):
            out.append(f"![TP scaling]({_rel(cp, readme_dir)})")
    out.append("")
    return out


def _accuracy_for(acc: dict, backend: str, block, tp: int = 2):
    """The eval_accuracy.py figures that go with an all-reduce backend (bf16 backends: the bf16-cast scheme)."""
    if not acc:
        return None
    res = acc.get("results", {})
    if backend.startswith("quant-"):
        key = f"tp={tp} {backend[len('quant-'):]}-b{block or 32}"
    else:
        key = f"tp={tp} bf16-cast"
    return key, res.get(key)


def ablation_section(path, d, acc_path, acc, readme_dir) -> list:
    if d is None:
        return []
    m = _meta(d)
    wl = d.get("workloads", {})
    base = m.get("baseline", "auto")
    rows = []
    for b in m.get("backends", []):
        row = [f"`{b}`" + (" (bf16, default)" if b == base else "")]
        for w in wl:
            r = next((x for x in d.get("results", []) if x["backend"] == b and x["workload"] == w), None)
            if r is None or r.get("status") != "ok":
                row.append((r or {}).get("status", "-") + (f": {r.get('error', '')[:60]}" if r else ""))
            else:
                ch = r.get("change_vs_baseline")
                row.append(f"{_tok(r['tok_s'])} tok/s" + (f" ({_pct(ch)})" if ch is not None and b != base else ""))
        a = _accuracy_for(acc, b, m.get("quant_block"), m.get("tp", 2))
        if a and a[1]:
            row.append(f"ppl {a[1]['ppl']:.4f}, top-1 {a[1]['top1_agreement'] * 100:.2f}%")
        else:
            row.append("")
        v = d.get("validation", {}).get(b, {})
        row.append("" if not v else ("same tokens" if v.get("tokens_equal") else
                                     f"{v.get('matching_tokens', 0) * 100:.0f}% of tokens" if "matching_tokens" in v
                                     else v.get("status", "")))
        rows.append(row)
    out = [f"### Quantized all-reduce, end to end (TP={m.get('tp')}, {m.get('model')}, {m.get('dtype')})", "",
           f"Sources: {_src(path, d)}; accuracy: {_src(acc_path, acc) if acc else 'no accuracy file'} "
           "(`benchmarks/eval_accuracy.py`, the trained byte-level checkpoint, TP=2, against the unsharded fp32 "
           f"model; the bf16 backends are shown with its bf16-cast row). tok/s counts prompt + generated tokens; the "
           f"change is against `{base}`, the default backend.", ""]
    head = ["SSMTP_ALLREDUCE"] + [f"{w}: {desc}" for w, desc in wl.items()] + ["accuracy (eval, TP=2)",
                                                                               "greedy vs bf16, random model"]
    out += _table(head, rows)
    out.append("")
    t = d.get("targets", [])
    if t:
        out.append("Targets: " + "; ".join(f"{x['target']}: {'met' if x['ok'] else 'missed'} ({x['detail']})"
                                          for x in t) + ".")
        out.append("")
    if path and os.path.isfile(path[:-5] + ".png"):
        out.append(f"![quantized all-reduce ablation]({_rel(path[:-5] + '.png', readme_dir)})")
        out.append("")
    return out


def _range(vals, scale=1.0, nd=1) -> str:
    vals = [v * scale for v in vals]
    lo, hi = min(vals), max(vals)
    return f"{lo:.{nd}f}" if f"{lo:.{nd}f}" == f"{hi:.{nd}f}" else f"{lo:.{nd}f}-{hi:.{nd}f}"


def ops_section(op_path, ops, ar_path, ar, readme_dir) -> list:
    if ops is None and ar is None:
        return []
    parts = []
    if ops:
        # the default kernels' rows (bench_ops.py times the alternatives side by side: "pipe", "chunked")
        cs = [c for c in ops.get("cases", []) if c.get("kernel", "") in ("", "block", "loop")]
        upd = [c for c in cs if c["op"] == "step" and c["tp"] == 1 and c["B"] >= 64]
        step = [f"{_range([c['frac_hbm'] for c in upd if c['B'] == b], 100, 0)}% (B={b})"
                for b in sorted({c["B"] for c in upd})]
        if step:
            parts.append(f"decode state update {' / '.join(step)} of HBM bandwidth")
        v = [c["frac_hbm"] for c in cs if c["op"] == "scan" and c["tp"] == 1]
        if v:
            parts.append(f"prefill scan {_range(v, 100, 0)}% of HBM bandwidth (latency-bound; see the header of "
                         "`csrc/cuda/scan.cu`)")
        models = sorted({c["model"] for c in cs})
        ops_txt = "Ops (TP=1 shards of " + ", ".join(models) + "): " + "; ".join(parts) + "."
    ar_txt = ""
    if ar:
        rs = ar.get("results", [])

        def us(backend, size_ok, mode="graph"):
            return {r["bytes"]: r["us"] for r in rs if r["backend"] == backend and r["mode"] == mode
                    and size_ok(r["bytes"])}

        small = lambda n: n <= 65536  # noqa: E731
        lamport = us("custom-lamport", small)
        custom = us("custom-1shot-rel", small) or us("custom-1shot", small)
        nccl = us("nccl", small)
        symm = {}
        for bk in ("symm-1shot", "symm-2shot"):
            for n, v in us(bk, small).items():
                symm[n] = min(v, symm.get(n, v))
        bits = []
        if lamport or custom:
            extra = ([f"flag-synchronised one-shot {_range(custom.values())} us"] if lamport and custom else [])
            extra += [f"NCCL {_range(nccl.values())} us"] if nccl else []
            extra += [f"torch symmetric memory {_range(symm.values())} us"] if symm else []
            name = "lamport one-shot" if lamport else "one-shot"
            bits.append(f"custom {name} all-reduce {_range((lamport or custom).values())} us for <= 64 KiB inside a "
                        "CUDA graph" + (f" ({', '.join(extra)})" if extra else ""))
        big = 16 << 20
        q = [r["us"] for r in rs
             if r["backend"].startswith("q-int8-b32") and r["mode"] == "graph" and r["bytes"] == big]
        n16 = us("nccl", lambda n: n == big).get(big)
        err = [e for e in ar.get("quant_error", []) if e["qdtype"] == "int8" and e["block"] == 32]
        if q and n16:
            bits.append(f"int8 block-32 quantized all-reduce {n16 / min(q):.2f}x NCCL at 16 MiB"
                        + (f" with {max(e['rel_err_global'] for e in err) * 100:.2f}% relative error" if err else ""))
        ratios = []
        for size in (16 << 20, 64 << 20, 256 << 20):
            n = us("nccl", lambda b: b == size).get(size)
            cu = [v for bk in ("custom-1shot", "custom-2shot") for v in us(bk, lambda b: b == size).values()]
            qi = [r["us"] for r in rs if r["backend"].startswith("q-int8") and r["mode"] == "graph"
                  and r["bytes"] == size]
            if n and cu:
                ratios.append(f"{size >> 20} MiB: exact {n / min(cu):.2f}x"
                              + (f", int8 (block 32 or 128) {n / min(qi):.2f}x" if qi else ""))
        if ratios:
            bits.append("large messages against NCCL (graph): " + "; ".join(ratios))
        probe = ar.get("nvlink_probe") or {}
        fl = {f["bytes"]: f for f in ar.get("floors") or []}
        if probe.get("copy_both_GBs") and fl:
            f256 = fl.get(256 << 20) or fl[max(fl)]
            bits.append(f"NVLink measured {probe['copy_both_GBs']:.0f} GB/s each way by SM copies "
                        f"({probe.get('ce_both_GBs', 0):.0f} by copy engines), both directions at once; at "
                        f"{f256['bytes'] >> 20} MiB the exact custom all-reduce takes {f256['custom_x_floor']}x and "
                        f"NCCL {f256['nccl_x_floor']}x the time its bytes need at the best of those rates")
        ar_txt = "Collectives (bf16, 2 GPUs): " + "; ".join(bits) + "."
    out = ["### Ops and collectives", "", "Sources: " + ", ".join(s for s in (_src(op_path, ops), _src(ar_path, ar))
                                                                   if s) + ".", ""]
    if ops:
        out.append(ops_txt)
    if ar:
        out.append(ar_txt)
    out.append("")
    for p in (op_path, ar_path):
        if p and os.path.isfile(p[:-5] + ".png"):
            out.append(f"![{os.path.basename(p)[:-5]}]({_rel(p[:-5] + '.png', readme_dir)})")
    out.append("")
    return out


_SCHEMES = {"fp32": "fp32 (exact)", "bf16-cast": "bf16 cast (the paper's fp16 scheme, in bf16)",
            "int8-b32": "int8, block 32", "int8-b128": "int8, block 128", "fp8-b32": "fp8 e4m3, block 32",
            "fp8-b128": "fp8 e4m3, block 128"}


def accuracy_section(path, d) -> list:
    if d is None:
        return []
    res = d.get("results", {})
    ref = next((v for k, v in res.items() if k.startswith("reference")), None)
    tps = sorted({int(k.split()[0][3:]) for k in res if k.startswith("tp=")})
    schemes = list(dict.fromkeys(k.split(" ", 1)[1] for k in res if k.startswith("tp=")))
    rows = []
    for s in schemes:
        row = [_SCHEMES.get(s, s)]
        for tp in tps:
            v = res.get(f"tp={tp} {s}")
            row += [f"{v['ppl']:.4f}", f"{v['top1_agreement'] * 100:.2f}%"] if v else ["", ""]
        rows.append(row)
    m = _meta(d)
    out = ["### Accuracy of the all-reduce schemes", "",
           f"Source: {_src(path, d)}: `benchmarks/eval_accuracy.py` on the trained checkpoint `{m.get('checkpoint')}`"
           f", {m.get('windows')} held-out windows of {m.get('length')} tokens, CPU/gloo, against the unsharded fp32 "
           f"model" + (f" (perplexity {ref['ppl']:.4f})" if ref else "") + ".", ""]
    head = ["scheme"] + [h for tp in tps for h in (f"TP={tp} ppl", f"TP={tp} top-1 agreement")]
    out += _table(head, rows)
    out.append("")
    return out


def sampling_section(path, d, ep, ed, readme_dir) -> list:
    """Token sampling: the ssmtp::sample kernel against the pure-torch sort sampler and HF's warpers (bench_sample.py),
    and the engine's decode step greedy vs sampled (bench_engine.py)."""
    rows_in = (d or {}).get("rows", [])
    dec = {b: x for b, x in (ed or {}).get("decode", {}).items() if x.get("engine_sampled_step_ms")}
    if not rows_in and not dec:
        return []
    out = ["### Token sampling (greedy / temperature / top-k / top-p)", ""]
    if rows_in:
        model = rows_in[0]["model"]
        out += [f"Source: {_src(path, d)}: one call on a batch of fp32 logits ({model}, V={rows_in[0]['V']}; "
                f"{_meta(d).get('logits', '')}), ssmtp::sample (one kernel; in a CUDA graph and eager) against the "
                "pure-torch sort sampler the engine used before it and HF transformers' logits warpers + softmax + "
                "multinomial, same logits, same run; temperature 0.8 except greedy. CUDA tokens equal to the C CPU "
                f"op's on {sum(r['cuda_vs_cpu_agreement'] == 1.0 for r in rows_in)} of {len(rows_in)} rows.", ""]
        rows = []
        for r in rows_in:
            if r["model"] != model or r["setting"] == "greedy":
                continue
            rows.append([str(r["n"]), r["setting"], f"{r['ssmtp_graph_us']:.0f} us", f"{r['ssmtp_us']:.0f} us",
                         f"{r['sort_us']:.0f} us", f"{r['hf_us']:.0f} us" if "hf_us" in r else "",
                         f"**{r['sort_us'] / r['ssmtp_us']:.0f}x**",
                         f"{r['hf_us'] / r['ssmtp_us']:.1f}x" if "hf_us" in r else ""])
        out += _table(["rows", "setting", "ssmtp (graph)", "ssmtp (eager)", "torch sort", "HF warpers",
                       "sort / ssmtp", "HF / ssmtp"], rows)
        other = [r for r in rows_in if r["model"] != model and r["setting"] != "greedy"]
        if other:
            ratios = [r["sort_us"] / r["ssmtp_us"] for r in other]
            out += ["", f"{other[0]['model']} (V={other[0]['V']}): sort / ssmtp {min(ratios):.1f}-{max(ratios):.1f}x "
                    f"over the same settings and batch sizes."]
        if os.path.isfile(path[:-5] + ".png"):
            out += ["", f"![sampling]({_rel(path[:-5] + '.png', readme_dir)})"]
        out.append("")
    if dec:
        sp = _meta(ed).get("decode_sampling", {})
        out += [f"Engine decode step (wall time per generated token, {_src(ep, ed)}), greedy vs temperature "
                f"{sp.get('temperature')}, top-k {sp.get('top_k')}, top-p {sp.get('top_p')}:", ""]
        out += _table(["batch", "greedy", "sampled", "sampled / greedy"],
                      [[b, _ms(x["engine_step_ms"], 3), _ms(x["engine_sampled_step_ms"], 3),
                        _x(x["engine_sampled_step_ms"] / x["engine_step_ms"], 3)] for b, x in dec.items()])
        out.append("")
    return out


def render(results: str, readme_dir: str) -> str:
    r = load_results(results)
    devices, gpus, dates = set(), set(), set()
    items = [v for k, v in r.items() if k != "throughput"] + list(r["throughput"])
    for v in items:
        ds = [v[1], v[3]] if len(v) == 4 else [v[1]]
        for d in ds:
            dev = str(_meta(d).get("device", "cpu")) if d is not None else "cpu"
            if dev != "cpu":
                n = re.match(r"(\d+)x (.*)", dev)
                devices.add(n.group(2) if n else dev)
                gpus.add(int(n.group(1)) if n else int(_meta(d).get("tp", 1)))
            if d is not None and _date(d):
                dates.add(_date(d)[:10])
    where = (f"{', '.join(sorted(devices))}, {' and '.join(str(g) for g in sorted(gpus))} GPU"
             f"{'s' if max(gpus) > 1 else ''}") if devices else "no GPU results"
    out = [BEGIN, f"## Performance ({where}; measured {', '.join(sorted(dates))})", "",
           "Generated by `python benchmarks/report.py` from the JSON files in `benchmarks/results/` (written by "
           "`benchmarks/run_gpu.sh`); one run each. Floors: decode = (weights/tp + 2 x states) / 4.26 TB/s (measured "
           "copy bandwidth); prefill = 2 x params x tokens / (tp x 790 TFLOP/s); see `shared/reference/"
           "measured-h200.md`.", ""]
    out += engine_section(*r["engine"], readme_dir, r["engine_hf"])
    out += sampling_section(*r["sample"], *r["engine"][:2], readme_dir)
    for pair in r["throughput"]:
        out += throughput_section(*pair, readme_dir)
    out += ablation_section(*r["ablation"], *r["accuracy"], readme_dir)
    out += ops_section(*r["ops"], *r["allreduce"], readme_dir)
    out += accuracy_section(*r["accuracy"])
    while out[-1] == "":
        out.pop()
    out.append(END)
    return "\n".join(out)


def splice(readme: str, section: str) -> str:
    """Replace the text between the markers; without markers, the `## Performance` section (up to the next `## `)."""
    if BEGIN in readme and END in readme:
        a = readme.index(BEGIN)
        b = readme.index(END) + len(END)
        return readme[:a] + section + readme[b:]
    m = re.search(r"^## Performance.*?(?=^## |\Z)", readme, flags=re.S | re.M)
    if m is None:
        return readme.rstrip("\n") + "\n\n" + section + "\n"
    return readme[:m.start()] + section + "\n\n" + readme[m.end():]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=os.path.join(HERE, "results"), help="folder with the JSON files")
    ap.add_argument("--readme", default=os.path.join(HERE, "..", "README.md"))
    ap.add_argument("--check", action="store_true", help="exit 1 if the README section is out of date")
    ap.add_argument("--print", action="store_true", help="print the section, write nothing")
    args = ap.parse_args(argv)
    section = render(args.results, os.path.dirname(os.path.abspath(args.readme)))
    if args.print:
        print(section)
        return 0
    with open(args.readme) as f:
        old = f.read()
    new = splice(old, section)
    if args.check:
        if new != old:
            print(f"{args.readme}: performance section out of date; run python benchmarks/report.py")
            return 1
        return 0
    if new != old:
        with open(args.readme, "w") as f:
            f.write(new)
        print(f"updated {args.readme}")
    else:
        print(f"{args.readme}: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
