#!/usr/bin/env bash
# Prefill speed and correctness on a GPU machine, one call (issue 14's prefill part):
#   1. the kernel check (KCHECK lines, including the fused prefill attention against a host
#      reference) and the prefill attention's FLOP rate (KPATTN);
#   2. logits against transformers in fp32 for OPT, Llama and Qwen2 with prompts of several
#      attention tiles (COMPARE lines: prefill_rel_err_max is the prompt's last position), with
#      the prefill in one pass and in passes of at most 320 tokens (--prefill-pass);
#   3. prefill tokens/s of OPT-6.7B and Llama-3-8B at batch 1, 8 and 32 (512-token prompts):
#      ours by default, with the cuBLAS attention path (COMPUTRON_PREFILL_ATTN=cublas) and without
#      the cuBLASLt fc1 epilogue (COMPUTRON_LT_EPILOGUE=0) and with the scalar elementwise kernels
#      (COMPUTRON_VEC_ELEMENTWISE=0), in turn, PREFILL_REPEATS times (PREFILL_SETTINGS picks the
#      list); then transformers with its default attention (SDPA) in the same call;
#      PREFILL_SPEED=0 skips step 3.
#   4. with PREFILL_NCU="preset ...": Nsight Compute's kernel durations of a batch-8 prefill
#      (scripts/prefill-breakdown.sh, NCU_ONLY=1).
# Usage: PREBUILT=dir OUT=dir scripts/prefill-check.sh   (dir holds the carried computron_model_check)
set -u
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
BIN=${PREBUILT:-build-prebuilt}/computron_model_check
OUT=${OUT:-$PWD/prefill-check-out}
REPEATS=${PREFILL_REPEATS:-2}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/prefill-check.log") 2>&1
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}
WORK=/tmp/prefill-check
mkdir -p $WORK
REF=scripts/hf_reference.py
step() { echo "=== $(date +%T) $*"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

step "kernels"
timeout 150 $BIN kernels | grep -E "^(KCHECK|KPATTN)" || echo "FAILED kernels"
echo "with COMPUTRON_PREFILL_ATTN_BLOCKS=3:"
COMPUTRON_PREFILL_ATTN_BLOCKS=3 timeout 150 $BIN kernels | grep -E "^KPATTN" | sed 's/^KPATTN/KPATTN3/' || echo "FAILED kernels"

step "correctness against transformers fp32 (prompts over several attention tiles)"
LENGTHS=${PREFILL_LENGTHS:-5,70,130,300}
python3 $REF make --arch opt --layers 4 --lengths $LENGTHS --new 8 --out $WORK/opt4 --seed 2 > /dev/null || echo "FAILED make opt"
python3 $REF make --arch llama --layers 4 --ffn 2816 --lengths $LENGTHS --new 8 --out $WORK/llama4 --seed 4 > /dev/null || echo "FAILED make llama"
python3 $REF make --arch qwen2 --layers 2 --ffn 2816 --dtype bfloat16 --lengths $LENGTHS --new 8 --out $WORK/qwen2bf --seed 7 > /dev/null || echo "FAILED make qwen2"
for m in opt4 llama4 qwen2bf; do
  for mode in fused cublas; do
    env $([ $mode = cublas ] && echo COMPUTRON_PREFILL_ATTN=cublas) timeout 120 $BIN generate --model $WORK/$m --requests $WORK/$m/requests.json \
        --out $WORK/$m.$mode.json --logits $WORK/$m.$mode.bin \
      && timeout 180 python3 $REF compare --model $WORK/$m --requests $WORK/$m/requests.json --ours $WORK/$m.$mode.json \
           --logits $WORK/$m.$mode.bin --label "$m $mode" || echo "FAILED $m $mode"
  done
  python3 $REF same --a $WORK/$m.fused.json --b $WORK/$m.cublas.json --label "$m fused vs cublas attention"
  # The prompts' prefill in passes of at most 320 tokens ({5, 70, 130} then {300}).
  timeout 120 $BIN generate --model $WORK/$m --requests $WORK/$m/requests.json --prefill-pass 320 \
      --out $WORK/$m.passes.json --logits $WORK/$m.passes.bin \
    && timeout 180 python3 $REF compare --model $WORK/$m --requests $WORK/$m/requests.json --ours $WORK/$m.passes.json \
         --logits $WORK/$m.passes.bin --label "$m prefill in passes of 320" || echo "FAILED $m passes"
  python3 $REF same --a $WORK/$m.fused.json --b $WORK/$m.passes.json --label "$m one prefill pass vs passes of 320"
done

[ "${PREFILL_SPEED:-1}" = 0 ] || step "prefill speed: ours (settings in turn), then transformers SDPA"
for p in $([ "${PREFILL_SPEED:-1}" = 0 ] || echo opt-6.7b llama-3-8b); do
  for r in $(seq $REPEATS); do
    for setting in ${PREFILL_SETTINGS:-default COMPUTRON_PREFILL_ATTN=cublas COMPUTRON_LT_EPILOGUE=0 COMPUTRON_VEC_ELEMENTWISE=0}; do
      [ $setting = COMPUTRON_LT_EPILOGUE=0 ] && [ $p != opt-6.7b ] && continue
      echo "SETTING $setting preset=$p repeat=$r"
      env $([ $setting != default ] && echo $setting) timeout 120 $BIN bench --preset $p --batch 1,8,32 --prompt 512 --new 2 \
        | grep -E "^BENCH" || echo "FAILED bench $p $setting"
    done
  done
  arch=opt; case $p in llama*) arch=llama;; esac
  timeout 240 python3 $REF bench --arch $arch --batch 1,8,32 --prompt 512 --new 2 --attn sdpa 2>&1 | grep HFBENCH || echo "FAILED hf $p"
done
if [ -n "${PREFILL_NCU:-}" ]; then
  step "kernel durations of a batch-8 prefill (Nsight Compute): $PREFILL_NCU"
  NCU_ONLY=1 NCU_LAUNCHES=${NCU_LAUNCHES:-2500} BIN=$BIN OUT=$OUT bash scripts/prefill-breakdown.sh $PREFILL_NCU
fi
step "summary"
grep -hE "^(KCHECK .*(overall|FAIL)|KPATTN|KPATTN3|COMPARE|SAME|FAILED|KERNEL)" "$OUT/prefill-check.log" | sed 's/^/  /'
