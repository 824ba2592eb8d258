#!/usr/bin/env bash
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
R=$OUT/r; mkdir -p $R
(cd ref && SSMTP_CUDA_ARCHS=90 python setup.py build_ext --inplace -q > $R/build-ref.log 2>&1) &
SSMTP_CUDA_ARCHS=90 python setup.py build_ext --inplace -q > $R/build.log 2>&1 || tail -20 $R/build.log
wait
echo built $SECONDS
SSMTP_GIT_COMMIT=NEW timeout 200 python benchmarks/ttft_breakdown.py --reps 5 --out $R/ttft-new.json > $R/ttft-new.log 2>&1; echo new $? $SECONDS
(cd ref && SSMTP_GIT_COMMIT=25ac96f timeout 200 python benchmarks/ttft_breakdown.py --reps 5 --out $R/ttft-ref.json > $R/ttft-ref.log 2>&1); echo ref $? $SECONDS
grep -h "hit/cold\|conv1d\|scan" $R/ttft-new.log $R/ttft-ref.log
cd $OUT && tar cf all.tar r
