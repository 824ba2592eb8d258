#!/usr/bin/env bash
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
R=$OUT/r; mkdir -p $R
python -c "import ssmtp._C" 2>/dev/null || SSMTP_CUDA_ARCHS=90 python setup.py build_ext --inplace -q > $R/build.log 2>&1
echo built $SECONDS
B="--model zamba-7b --decode-batches 3,4 --prefill 1x512 --quick --no-hf --decode-sampling none --ttft-reps 1 --ttft-len 512 --decode-tokens 8 --graph-iters 40"
for i in 1 2; do
SSMTP_GIT_COMMIT=6233328 timeout 100 python benchmarks/bench_engine.py $B --out $R/z-default$i.json > $R/zd$i.log 2>&1; echo d $? $SECONDS
SSMTP_DECODE_STEP_MAX_BATCH=2 SSMTP_GIT_COMMIT=6233328-step2 timeout 100 python benchmarks/bench_engine.py $B --out $R/z-step2-$i.json > $R/z2$i.log 2>&1; echo s2 $? $SECONDS
done
cd $OUT && tar cf all.tar r
