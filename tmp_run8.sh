#!/usr/bin/env bash
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error USE_HUB_KERNELS=0
t0=$SECONDS
SSMTP_CUDA_ARCHS=90 python setup.py build_ext --inplace -q > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 1; }
echo "built in $((SECONDS-t0)) s"
timeout 150 python -m pytest -q -m cuda tests/test_decode_fused_gpu.py tests/test_engine_gpu.py tests/test_engine_zamba_gpu.py tests/test_decode_fused.py -p no:cacheprovider > $OUT/tests.log 2>&1; echo "tests rc=$? at $((SECONDS-t0)) s"; tail -1 $OUT/tests.log
timeout 90 python benchmarks/bench_ops.py --filter "dtp step" --no-hf --no-sweep --out $OUT/dtp-ops.json > $OUT/dtp-ops.log 2>&1; echo "bench rc=$? at $((SECONDS-t0)) s"; grep "dtp step" $OUT/dtp-ops.log
cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
timeout 200 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 $cs --tool memcheck --error-exitcode 99 --print-limit 20 python -m pytest -q -x -m cuda tests/test_decode_fused_gpu.py -k "dt_proj" -p no:cacheprovider > $OUT/memcheck.log 2>&1; echo "memcheck rc=$? at $((SECONDS-t0)) s"; tail -3 $OUT/memcheck.log
