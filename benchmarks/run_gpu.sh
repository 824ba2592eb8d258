#!/usr/bin/env bash
# One call on the GPU machine: build the extension, run the GPU tests, run the benchmarks.
# Everything lands under $OUT (default benchmarks/results/latest): logs, JSON, PNG.
#   bash benchmarks/run_gpu.sh [tests|sanitize|ncu|ops|pick|sample|allreduce|engine|throughput|ablation|leak|profile|
#   train|all ...]   (default: all; "all" leaves out sanitize and ncu)
# Budget knobs (seconds; 0 = no limit): THROUGHPUT_BUDGET_S (per TP run, default 120), THROUGHPUT_ARGS (e.g.
# "--quick" or "--model mamba-2.8b"), ABLATION_BUDGET_S (default 90), ABLATION_ARGS (e.g. "--quick"),
# ABLATION_BACKENDS (default auto,nccl,custom,quant-int8,quant-fp8; the first is the baseline).
# Results are also packed into $OUT/results.tar (the device tool returns at most 8 files).
# Multi-GPU parts run when 2+ GPUs are visible. NVLink multicast stays off (shared machines).
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export USE_HUB_KERNELS=0 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
OUT=${OUT:-benchmarks/results/latest}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/run.log"
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(all)
want() { for s in "${steps[@]}"; do { [ "$s" = all ] && [ "$1" != sanitize ] && [ "$1" != ncu ]; } || [ "$s" = "$1" ] &&
         return 0; done
         return 1; }
ngpu=$(python -c "import torch; print(torch.cuda.device_count())")
status=0
run() { echo "== $*" | tee -a "$LOG"; local t0=$SECONDS; "$@" 2>&1 | tee -a "$LOG"; local rc=${PIPESTATUS[0]};
        echo "== rc=$rc in $((SECONDS - t0)) s: $*" | tee -a "$LOG"; [ "$rc" -eq 0 ] || status=1; }

{ echo "commit ${SSMTP_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)} date $(date -u +%FT%TZ)";
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader;
  python -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"; } | tee -a "$LOG"

# REF_TREE: a second source tree built in parallel with this one; the engine step then runs its bench_engine too,
# side by side, as engine-*-ref.json (an A/B of two commits in one run). E.g. `mkdir ref && git archive <commit> |
# tar -x -C ref` (ref/ is git-ignored: hand it to the GPU machine with the tree), then REF_TREE=ref REF_COMMIT=<commit>
# (the label its JSON carries).
if [ -n "${REF_TREE:-}" ]; then
  (cd "$REF_TREE" && SSMTP_CUDA_ARCHS=${SSMTP_CUDA_ARCHS:-90} python setup.py build_ext --inplace -q) \
    > "$OUT/build-ref.log" 2>&1 &
  ref_pid=$!
fi
run env SSMTP_CUDA_ARCHS=${SSMTP_CUDA_ARCHS:-90} python setup.py build_ext --inplace -q
if [ -n "${REF_TREE:-}" ]; then
  wait "$ref_pid"; rc=$?; echo "== reference tree $REF_TREE built: rc=$rc" | tee -a "$LOG"; [ "$rc" -eq 0 ] || status=1
fi
python -c "import ssmtp; print('built:', ssmtp.ops.build_info())" | tee -a "$LOG"

if want tests; then
  # TESTS: test files to run instead of the whole suite (e.g. "tests/test_engine_gpu.py tests/test_ops_saves.py")
  run python -m pytest -q -m "cuda or multigpu" ${TESTS:-tests} -p no:cacheprovider
fi
if want sanitize; then
  # compute-sanitizer over the GPU op tests (not part of "all": slow). memcheck: out-of-bounds and misaligned device
  # accesses, with torch's caching allocator off so that every tensor is its own allocation; racecheck: shared-memory
  # hazards in the kernels that share data through shared memory (scan, decode_in, SSD, attention). SANITIZE_TESTS /
  # SANITIZE_RACE_TESTS: other test files; SANITIZE_K / SANITIZE_RACE_K: pytest -k filters (memcheck's default leaves
  # out the graph-capture tests: capturing allocates through the caching allocator, which memcheck's run turns off);
  # SANITIZE_TIMEOUT: seconds per tool (300).
  # Needs a machine whose runtime lets the sanitizer at the device (device/KINDS.md: Firecracker yes, gVisor no).
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  st=${SANITIZE_TESTS:-tests/test_cuda_ops.py tests/test_decode_fused_gpu.py tests/test_linear.py tests/test_ssd_gpu.py
      tests/test_attention.py tests/test_sample.py}
  rt=${SANITIZE_RACE_TESTS:-tests/test_ssd_gpu.py tests/test_decode_fused_gpu.py tests/test_attention.py}
  st=$(for f in $st; do [ -f "$f" ] && echo "$f"; done); rt=$(for f in $rt; do [ -f "$f" ] && echo "$f"; done)
  run timeout "${SANITIZE_TIMEOUT:-300}" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$cs" --tool memcheck --error-exitcode 99 \
    --print-limit 20 python -m pytest -q -x -m cuda $st -k "${SANITIZE_K-not graph}" -p no:cacheprovider
  run timeout "${SANITIZE_TIMEOUT:-300}" "$cs" --tool racecheck --error-exitcode 99 --print-limit 20 \
    python -m pytest -q -x -m cuda $rt -k "${SANITIZE_RACE_K:-}" -p no:cacheprovider
fi
if want ncu; then
  # Nsight Compute counters of one launch of each hot kernel (benchmarks/ncu_kernels.py; not part of "all"): time,
  # DRAM / SM / issue / MUFU throughput, occupancy, registers and the warp stall reasons, clocks left alone.
  # NCU_FILTER: case labels (comma-separated substrings). Without the stall regex if this ncu refuses it.
  ncu_bin=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
  ncu_run() { "$ncu_bin" --clock-control none --profile-from-start off --csv --page raw --metrics "$1" \
                python benchmarks/ncu_kernels.py --filter "${NCU_FILTER:-}" > "$OUT/ncu.csv"; }
  m=$(python benchmarks/ncu_kernels.py --metrics)
  echo "== ncu (metrics: $m)" | tee -a "$LOG"
  if ! ncu_run "$m" 2>>"$LOG" || ! grep -q '^"ID"' "$OUT/ncu.csv"; then
    echo "== ncu failed with the stall regex: again without it" | tee -a "$LOG"
    run ncu_run "$(echo "$m" | tr ',' '\n' | grep -v '^regex:' | paste -sd,)"
  fi
  run python benchmarks/ncu_kernels.py --summarize "$OUT/ncu.csv" --out "$OUT/ncu.json"
fi
if want ops; then
  # OPS_ARGS: e.g. "--quick --no-hf --no-sweep"; OPS_FILTER: case labels containing any of these (comma-separated,
  # spaces allowed), e.g. "zamba2-2.7b tp1,mamba-2.8b tp1 scan"
  run python benchmarks/bench_ops.py --out "$OUT/ops.json" ${OPS_ARGS:-} --filter "${OPS_FILTER:-}"
fi
if want pick && [ -f "$OUT/ops.json" ]; then
  # choose the scan and decode-step kernels for the steps that follow from this run's ops.json: per op, among the
  # kernels that validated on every case, the one with the smaller total graph time; exported as SSMTP_SCAN_KERNEL /
  # SSMTP_STEP_KERNEL and written to kernel-choice.json
  python - "$OUT/ops.json" "$OUT/kernel-choice.json" "$OUT/kernel-choice.env" <<'PY' 2>&1 | tee -a "$LOG"
import collections, json, sys
rows = json.load(open(sys.argv[1]))["cases"]
env = {"scan": "SSMTP_SCAN_KERNEL", "step": "SSMTP_STEP_KERNEL"}
choice = {}
for op, var in env.items():
    by = collections.defaultdict(dict)
    for r in rows:
        if r["op"] == op:
            by[r["label"]][r["kernel"]] = r
    kernels = sorted({k for v in by.values() for k in v})
    bad = sorted({k for v in by.values() for k, x in v.items() if not x["valid"]})  # never picked
    ok = [v for v in by.values() if len(v) == len(kernels)]
    tot = {k: sum(v[k]["us"] for v in ok) for k in kernels if k not in bad}
    best = min(tot, key=tot.get) if tot else None
    choice[op] = dict(env=var, kernel=best, total_us=tot, cases=len(ok), invalid_kernels=bad)
    print(f"[pick] {op}: {best} (total graph us over {len(ok)} cases: {tot}; failed validation: {bad or 'none'})")
json.dump(choice, open(sys.argv[2], "w"), indent=1)
open(sys.argv[3], "w").write("".join(f"{c['env']}={c['kernel']}\n" for c in choice.values() if c["kernel"]))
PY
  set -a; . "$OUT/kernel-choice.env"; set +a
fi
if want allreduce && [ "$ngpu" -ge 2 ]; then
  run torchrun --nproc_per_node 2 benchmarks/bench_allreduce.py --out "$OUT/allreduce.json"
fi
if want sample; then
  # token sampling: the ssmtp::sample kernel against the pure-torch sort sampler and HF's warpers, same logits
  run python benchmarks/bench_sample.py --out "$OUT/sample.json" ${SAMPLE_ARGS:-}
fi
if want engine; then
  # ENGINE_ARGS: extra bench_engine.py options for a shorter run, e.g. "--ttft-reps 2 --graph-iters 30"
  run torchrun --nproc_per_node 1 benchmarks/bench_engine.py --out "$OUT/engine-tp1.json" ${ENGINE_ARGS:-}
  # ENGINE_ALT_ENV: the TP=1 run again with these settings, side by side (e.g. "SSMTP_PDL=0")
  [ -n "${ENGINE_ALT_ENV:-}" ] && run env $ENGINE_ALT_ENV torchrun --nproc_per_node 1 benchmarks/bench_engine.py \
    --out "$OUT/engine-tp1-alt.json" ${ENGINE_ARGS:-}
  [ -n "${REF_TREE:-}" ] && run env -C "$REF_TREE" SSMTP_GIT_COMMIT="${REF_COMMIT:-$REF_TREE}" torchrun --nproc_per_node 1 benchmarks/bench_engine.py \
    --out "$OUT/engine-tp1-ref.json" ${ENGINE_ARGS:-}
  [ "$ngpu" -ge 2 ] && run torchrun --nproc_per_node 2 benchmarks/bench_engine.py --out "$OUT/engine-tp2.json" \
    --no-hf ${ENGINE_ARGS:-}
  [ "$ngpu" -ge 2 ] && [ -n "${REF_TREE:-}" ] && run env -C "$REF_TREE" SSMTP_GIT_COMMIT="${REF_COMMIT:-$REF_TREE}" torchrun --nproc_per_node 2 \
    benchmarks/bench_engine.py --out "$OUT/engine-tp2-ref.json" --no-hf ${ENGINE_ARGS:-}
  # ENGINE_ALT_ENV_TP2: the TP=2 run again with these settings, side by side (e.g. "SSMTP_AR_PDL=0")
  [ "$ngpu" -ge 2 ] && [ -n "${ENGINE_ALT_ENV_TP2:-}" ] && run env $ENGINE_ALT_ENV_TP2 torchrun --nproc_per_node 2 \
    benchmarks/bench_engine.py --out "$OUT/engine-tp2-alt.json" --no-hf ${ENGINE_ARGS:-}
fi
if want throughput; then
  # batch-request throughput at TP=1 (+ HF transformers on a small subset) and TP=2, then the TP2/TP1 ratios
  run torchrun --nproc_per_node 1 benchmarks/bench_throughput.py --out "$OUT/throughput-tp1.json" \
    --budget-s "${THROUGHPUT_BUDGET_S:-120}" ${THROUGHPUT_ARGS:-}
  if [ "$ngpu" -ge 2 ]; then
    run torchrun --nproc_per_node 2 benchmarks/bench_throughput.py --out "$OUT/throughput-tp2.json" \
      --budget-s "${THROUGHPUT_BUDGET_S:-120}" ${THROUGHPUT_ARGS:-}
    run python benchmarks/bench_throughput.py --compare "$OUT/throughput-tp1.json" "$OUT/throughput-tp2.json" \
      --out "$OUT/throughput-compare.json"
  fi
fi
if want ablation && [ "$ngpu" -ge 2 ]; then
  # all-reduce backend ablation (bf16 default vs NCCL, custom, int8, fp8), end to end, TP=2
  run torchrun --nproc_per_node 2 benchmarks/bench_quant_ablation.py --out "$OUT/quant-ablation-tp2.json" \
    --budget-s "${ABLATION_BUDGET_S:-90}" ${ABLATION_ARGS:-}
fi
if want leak; then
  # leak check (benchmarks/leak_check.py): 10,000 graph-decode steps with continuous requests, memory sampled every
  # 500; at TP=2 also 20 Communicator create/close cycles. LEAK_ARGS: e.g. "--steps 2000" for a shorter run
  run python benchmarks/leak_check.py --out "$OUT/leak-tp1.json" ${LEAK_ARGS:-}
  [ "$ngpu" -ge 2 ] && run torchrun --nproc_per_node 2 benchmarks/leak_check.py --out "$OUT/leak-tp2.json" ${LEAK_ARGS:-}
fi
if want profile; then
  # per-kernel time of a graph decode step (B = 1, 8, 256) and of an eager 1x1024 prefill; decode again with the
  # small-batch GEMV off (SSMTP_GEMV=0: cuBLAS for every projection), side by side
  run torchrun --nproc_per_node 1 benchmarks/profile_decode.py --batches 1,8,256 --prefill 1x1024 \
    --out "$OUT/profile-tp1.json"
  run env SSMTP_GEMV=0 torchrun --nproc_per_node 1 benchmarks/profile_decode.py --batches 1,8 \
    --out "$OUT/profile-tp1-cublas.json"
fi
if want train; then
  run timeout "${TRAIN_TIMEOUT:-240}" python benchmarks/train_tiny.py --out "$OUT/tiny-mamba-bytes" --steps "${TRAIN_STEPS:-1500}"
fi
echo "== done, status $status" | tee -a "$LOG"
(cd "$OUT" && tar cf results.tar --exclude results.tar . 2>/dev/null)
exit $status
