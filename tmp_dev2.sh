#!/usr/bin/env bash
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
R=$OUT/r; mkdir -p $R
python -c "import ssmtp._C" 2>/dev/null || { (cd ref && SSMTP_CUDA_ARCHS=90 python setup.py build_ext --inplace -q > /dev/null 2>&1) & SSMTP_CUDA_ARCHS=90 python setup.py build_ext --inplace -q > $R/build.log 2>&1; wait; }
echo built $SECONDS
B="--model zamba-7b --decode-batches 4,8,16 --prefill 1x512 --quick --no-hf --decode-sampling none --ttft-reps 1 --ttft-len 512 --decode-tokens 8 --graph-iters 40"
SSMTP_GIT_COMMIT=NEW timeout 150 python benchmarks/bench_engine.py $B --out $R/new.json > $R/new.log 2>&1; echo new $? $SECONDS
SSMTP_DECODE_STEP_MAX_BATCH=4 SSMTP_GIT_COMMIT=NEW-step4 timeout 150 python benchmarks/bench_engine.py $B --out $R/new-step4.json > $R/new4.log 2>&1; echo new4 $? $SECONDS
(cd ref && SSMTP_GIT_COMMIT=25ac96f timeout 150 python benchmarks/bench_engine.py $B --out $R/ref.json > $R/ref.log 2>&1); echo ref $? $SECONDS
cd $OUT && tar cf all.tar r
