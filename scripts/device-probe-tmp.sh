#!/usr/bin/env bash
export NCCL_NVLS_ENABLE=0
P=$PWD/build-prebuilt
D="--batches 1,2,4,8,16,32,64 --prompt-tokens 16,64,256,1024,2048 --contexts 16,64,256,1024,2032 --repeats 3 --warmup 1"
PREBUILT=$P CAL=1 REPLAYS="" CAL_ARGS_llama_3_8b="$D --power-probe" \
  CAL_ARGS_opt_13b="--batches 1,2,4,8,16 --prompt-tokens 16,64,256,1024 --contexts 16,64,256,1024 --repeats 3 --warmup 1 --power-probe" \
  STEP_TIMEOUT_S=280 timeout 560 scripts/fidelity-1gpu-check.sh $OUT/cal > /dev/null 2>&1
echo rc $?; grep -E "^===|power probe|computron calibrate:|merged|FAILED" $OUT/cal/fidelity-1gpu-check.log | cut -c1-400
