#!/usr/bin/env bash
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
R=$OUT/r; mkdir -p $R
(cd ref && SSMTP_CUDA_ARCHS=90 python setup.py build_ext --inplace -q > $R/build-ref.log 2>&1) &
SSMTP_CUDA_ARCHS=90 python setup.py build_ext --inplace -q > $R/build.log 2>&1 || tail -20 $R/build.log
wait
echo built $SECONDS
B="--model mamba-2.8b --decode-batches 1,2,8,64,256 --prefill 1x512 --quick --no-hf --decode-sampling none --ttft-reps 1 --ttft-len 512 --decode-tokens 8 --graph-iters 40"
for i in 1 2; do
  SSMTP_GIT_COMMIT=NEW timeout 100 python benchmarks/bench_engine.py $B --out $R/new$i.json > $R/new$i.log 2>&1; echo new$i $? $SECONDS
  (cd ref && SSMTP_GIT_COMMIT=25ac96f timeout 100 python benchmarks/bench_engine.py $B --out $R/ref$i.json > $R/ref$i.log 2>&1); echo ref$i $? $SECONDS
done
timeout 200 python -m pytest -q -m cuda tests/test_cuda_ops.py -k "step" tests/test_engine_gpu.py -p no:cacheprovider -x > $R/t1.log 2>&1; echo t1 $? $SECONDS; tail -2 $R/t1.log
cd $OUT && tar cf all.tar r
