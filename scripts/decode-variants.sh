#!/usr/bin/env bash
# Decode speed of the skinny-product code variants (COMPUTRON_SKINNY_VARIANT 0-3, see
# runtime/model/cuda/kernels.cu), one GPU, in one process run per variant and preset: the kernel
# timings against cuBLAS and the decode step against the bandwidth bound.
# Usage: BIN=path/to/computron_model_check scripts/decode-variants.sh [VARIANTS...]  (default 0 1 2 3)
set -u
BIN=${BIN:?set BIN to computron_model_check}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for v in ${@:-0 1 2 3}; do
  echo "VARIANT $v"
  COMPUTRON_SKINNY_VARIANT=$v timeout 90 "$BIN" kernels | grep -E "^KGEMM .* rows +(1|8|16) |overall"
  for p in opt-6.7b llama-3-8b; do
    COMPUTRON_SKINNY_VARIANT=$v timeout 90 "$BIN" bench --preset $p --batch 1,8,32 --prompt 512 --new 128 | grep '^BENCH' |
      python3 -c "
import sys, json
for l in sys.stdin:
    d = json.loads(l.split('BENCH', 1)[1])
    print('BENCHV v$v %s b%d step %.3f ms bound %.3f ratio %.3f prefill5 %.0f' % (d['preset'], d['batch'], d['decode_step_ms_median'], d['decode_bound_ms'], d['decode_vs_bound'], d['prefill_median5_tokens_per_s']))"
  done
done
