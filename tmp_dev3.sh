#!/bin/bash
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
export SSMTP_GIT_COMMIT=ec8abef
mkdir -p $OUT/r
t0=$SECONDS
SSMTP_CUDA_ARCHS=90 python setup.py build_ext --inplace -q > $OUT/r/build.log 2>&1 || { tail -30 $OUT/r/build.log; exit 1; }
echo "build $((SECONDS-t0)) s"
python tmp_bound.py 2>&1 | grep -v Warn | tail -12
echo "bound $((SECONDS-t0)) s"
cd $OUT && tar cf r.tar r && rm -rf r
