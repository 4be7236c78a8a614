#!/usr/bin/env bash
# Model library check on a GPU machine (2 GPUs for the TP/PP runs), one call: build the model library and driver,
# compare OPT, Llama, Qwen2 and Mistral against transformers (fp32 reference), TP=2 and PP=2 against TP=1,
# seeded sampling, the KV budget refusal, and speed against transformers eager and against the
# bandwidth bound. Logs go to $OUT (or ./model-check-out); the summary lines are printed last.
# MODEL_CHECK_QUICK=1: a shorter call for decode work: six small models (OPT, Llama, Qwen2, Mistral)
# against transformers, TP=2 runs of Llama, Qwen2 and OPT and a PP=2 run of OPT where two GPUs exist,
# Mistral's sliding-window refusal, the kernel check and timings, and our speed
# table under the decode settings (COMPUTRON_PDL, COMPUTRON_DECODE_GRAPH, COMPUTRON_SKINNY_ROWS); no sampling,
# refusal or transformers speed runs. MODEL_CHECK_SKIP_SPEED=1 (with QUICK): correctness only.
# PREBUILT=dir: use the carried computron_model_check instead of building; with QUICK and a carried
# computron there too, also run `computron replay` on a checkpoint made here (the runtime's
# checkpoint path).
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/model-check-out}
mkdir -p "$OUT"
LOG=$OUT/model-check.log
WORK=/tmp/model-check
mkdir -p $WORK
exec > >(tee -a "$LOG") 2>&1
step() { echo "=== $(date +%T) $*"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__, "gpus", torch.cuda.device_count())'

step "build"
NCCL_ROOT=$(python3 -c 'import nvidia.nccl as n; print(list(n.__path__)[0])' 2>/dev/null || true)
# A standalone project around runtime/model: the device lacks Boost.Program_options, which only
# the rest of the tree needs.
mkdir -p $WORK/cmake
cat > $WORK/cmake/CMakeLists.txt <<CMAKE
cmake_minimum_required(VERSION 3.25)
project(computron_model_check LANGUAGES CXX CUDA)
set(CMAKE_CXX_STANDARD 20)
set(CMAKE_CUDA_ARCHITECTURES 90)
find_package(CUDAToolkit REQUIRED)
find_package(Threads REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
set(COMPUTRON_HAVE_CUDA ON)
set(COMPUTRON_WARNINGS -Wall -Wextra)
add_library(computron_common STATIC $PWD/common/model_spec.cpp $PWD/common/model_family.cpp $PWD/common/json_reader.cpp)
target_include_directories(computron_common PUBLIC $PWD)
target_link_libraries(computron_common PUBLIC nlohmann_json::nlohmann_json)
add_subdirectory($PWD/runtime/model model)
CMAKE
if [ -n "${PREBUILT:-}" ] && [ -x "$PREBUILT/computron_model_check" ]; then
  BIN=$PREBUILT/computron_model_check
  export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}
  echo "using the carried $BIN"
else
cmake -S $WORK/cmake -B /tmp/build-model -DCMAKE_BUILD_TYPE=Release -DNCCL_ROOT="$NCCL_ROOT" > $OUT/cmake.log 2>&1 \
  || { tail -30 $OUT/cmake.log; exit 1; }
grep -E "NCCL" $OUT/cmake.log
cmake --build /tmp/build-model --target computron_model_check -j 32 > $OUT/build.log 2>&1 || { grep -E "error" -A3 $OUT/build.log | head -40; exit 1; }
BIN=/tmp/build-model/model/computron_model_check
export LD_LIBRARY_PATH=${NCCL_ROOT:+$NCCL_ROOT/lib:}${LD_LIBRARY_PATH:-}
fi

REF=scripts/hf_reference.py
# Mistral with a 256-token window asked for a 512-token context: refused, naming both.
mistral_window_refusal() {
  timeout 60 $BIN generate --model $WORK/mistral8 --requests $WORK/mistral8/requests.json --max-context 512 --out $WORK/x.json
  echo "REFUSAL mistral window exit code $? (3 = refused with a message)"
}
if [ "${MODEL_CHECK_QUICK:-0}" = 1 ]; then
  # bench_ours [VAR=VALUE ...]: our speed table with these decode settings exported
  # (COMPUTRON_PDL, COMPUTRON_ATTN_WAVES, COMPUTRON_DECODE_GRAPH, COMPUTRON_SKINNY_ROWS,
  # COMPUTRON_DECODE_FUSE; none: the defaults).
  bench_ours() {
    for p in opt-6.7b llama-3-8b; do
      ( for kv in "$@"; do export "$kv"; done
        echo "SETTING ${*:-default} preset=$p"
        timeout 60 $BIN bench --preset $p --batch 1,8,32 --prompt 512 --new 128 ) || echo "FAILED bench $p $*"
    done
  }
  SPEED=$([ "${MODEL_CHECK_SKIP_SPEED:-0}" = 1 ] && echo no || echo yes)
  if [ $SPEED = yes ]; then
  step "decode kernels: skinny products vs cuBLAS, attention"
  timeout 90 $BIN kernels || echo "FAILED kernels"
  step "speed: ours, default decode settings"
  bench_ours
  fi
  step "make models"
  python3 $REF make --arch opt --layers 8 --out $WORK/opt8 --seed 2 || true
  python3 $REF make --arch llama --layers 8 --ffn 2816 --out $WORK/llama8 --seed 4 || true
  python3 $REF make --arch llama --layers 2 --ffn 2816 --dtype bfloat16 --out $WORK/llama2bf --seed 5 || true
  python3 $REF make --arch qwen2 --layers 8 --ffn 2816 --out $WORK/qwen8 --seed 6 || true
  python3 $REF make --arch qwen2 --layers 2 --ffn 2816 --dtype bfloat16 --tie yes --out $WORK/qwen2bftied --seed 7 || true
  python3 $REF make --arch mistral --layers 8 --ffn 2816 --sliding-window 256 --out $WORK/mistral8 --seed 8 || true
  step "correctness vs transformers fp32"
  for m in opt8 llama8 llama2bf qwen8 qwen2bftied mistral8; do
    timeout 120 $BIN generate --model $WORK/$m --requests $WORK/$m/requests.json --out $WORK/$m.tp1.json --logits $WORK/$m.tp1.bin \
      && timeout 180 python3 $REF compare --model $WORK/$m --requests $WORK/$m/requests.json --ours $WORK/$m.tp1.json \
           --logits $WORK/$m.tp1.bin --label "$m tp1" || echo "FAILED $m tp1"
  done
  if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
    for run in "llama8 2 1" "qwen8 2 1" "opt8 2 1" "opt8 1 2"; do
      set -- $run
      timeout 120 $BIN generate --model $WORK/$1 --requests $WORK/$1/requests.json --tp $2 --pp $3 --out $WORK/$1.tp$2pp$3.json \
        --logits $WORK/$1.tp$2pp$3.bin \
        && python3 $REF same --a $WORK/$1.tp1.json --b $WORK/$1.tp$2pp$3.json --label "$1 tp$2 pp$3 vs tp1" \
        && python3 $REF compare --model $WORK/$1 --requests $WORK/$1/requests.json --ours $WORK/$1.tp$2pp$3.json \
             --logits $WORK/$1.tp$2pp$3.bin --label "$1 tp$2 pp$3" || echo "FAILED $1 tp$2 pp$3"
    done
  fi
  mistral_window_refusal
  if [ -n "${PREBUILT:-}" ] && [ -x "$PREBUILT/computron" ]; then
    # The runtime reading a checkpoint into its host store and running it from the GPU pool.
    step "runtime: replay with a checkpoint"
    timeout 120 $PREBUILT/computron replay scenarios/coldstart-opt13b-h200.json --device cuda --host-memory-gib 100 --no-files \
      --set "models[0].spec={\"hf_config\": \"$WORK/opt8/config.json\"}" --set 'models[0].name=opt8' --set 'models[0].count=1' \
      --set workload.output_tokens=16 --checkpoint opt8=$WORK/opt8 && echo "REPLAY checkpoint ok" || echo "FAILED replay checkpoint"
  fi
  if [ $SPEED = yes ]; then
  step "speed: ours, other decode settings (fewer attention splits, PDL off), then the default again"
  bench_ours COMPUTRON_ATTN_WAVES=2
  bench_ours COMPUTRON_PDL=0
  bench_ours
  fi
  step "summary"
  grep -hE "^(KCHECK .*(overall|FAIL)|COMPARE|SAME|SETTING|BENCH|REPLAY|REFUSAL|FAILED)" $LOG | sed 's/^/  /'
  exit 0
fi

step "make models"
python3 $REF make --arch opt --layers 2 --out $WORK/opt2 --seed 1 || true
python3 $REF make --arch opt --layers 8 --out $WORK/opt8 --seed 2 || true
python3 $REF make --arch llama --layers 2 --ffn 2816 --out $WORK/llama2 --seed 3 || true
python3 $REF make --arch llama --layers 8 --ffn 2816 --out $WORK/llama8 --seed 4 || true
python3 $REF make --arch llama --layers 2 --ffn 2816 --dtype bfloat16 --out $WORK/llama2bf --seed 5 || true
python3 $REF make --arch qwen2 --layers 8 --ffn 2816 --out $WORK/qwen8 --seed 6 || true
python3 $REF make --arch qwen2 --layers 2 --ffn 2816 --dtype bfloat16 --tie yes --out $WORK/qwen2bftied --seed 7 || true
python3 $REF make --arch mistral --layers 8 --ffn 2816 --sliding-window 256 --out $WORK/mistral8 --seed 8 || true

step "correctness vs transformers fp32"
for m in opt2 opt8 llama2 llama8 llama2bf qwen8 qwen2bftied mistral8; do
  timeout 120 $BIN generate --model $WORK/$m --requests $WORK/$m/requests.json --out $WORK/$m.tp1.json --logits $WORK/$m.tp1.bin \
    && timeout 180 python3 $REF compare --model $WORK/$m --requests $WORK/$m/requests.json --ours $WORK/$m.tp1.json \
         --logits $WORK/$m.tp1.bin --label "$m tp1" || echo "FAILED $m tp1"
done

step "TP=2 and PP=2 against TP=1"
for m in opt8 llama8 qwen8; do
  for cfg in "2 1" "1 2"; do
    set -- $cfg
    timeout 120 $BIN generate --model $WORK/$m --requests $WORK/$m/requests.json --tp $1 --pp $2 --out $WORK/$m.tp$1pp$2.json \
      --logits $WORK/$m.tp$1pp$2.bin \
      && python3 $REF same --a $WORK/$m.tp1.json --b $WORK/$m.tp$1pp$2.json --label "$m tp$1 pp$2 vs tp1" \
      && python3 $REF compare --model $WORK/$m --requests $WORK/$m/requests.json --ours $WORK/$m.tp$1pp$2.json \
           --logits $WORK/$m.tp$1pp$2.bin --label "$m tp$1 pp$2" || echo "FAILED $m tp$1 pp$2"
  done
done

step "seeded sampling and the KV budget refusal"
S="--model $WORK/llama2 --requests $WORK/llama2/requests.json --temperature 0.8 --top-k 50 --top-p 0.9"
timeout 60 $BIN generate $S --seed 7 --out $WORK/s7a.json && timeout 60 $BIN generate $S --seed 7 --out $WORK/s7b.json \
  && timeout 60 $BIN generate $S --seed 8 --out $WORK/s8.json \
  && python3 $REF same --a $WORK/s7a.json --b $WORK/s7b.json --label "sampling seed 7 twice" \
  && python3 $REF same --a $WORK/s7a.json --b $WORK/s8.json --label "sampling seed 7 vs 8"
timeout 60 $BIN generate --model $WORK/llama2 --requests $WORK/llama2/requests.json --max-context 4000 --budget-gib 0.01 --out $WORK/x.json
echo "REFUSAL exit code $? (3 = refused with a message)"
mistral_window_refusal

step "speed: ours"
for p in opt-6.7b llama-3-8b; do
  timeout 240 $BIN bench --preset $p --batch 1,8,32 --prompt 512 --new 128 || echo "FAILED bench $p"
done
step "speed: transformers eager"
timeout 150 python3 $REF bench --arch opt --batch 1,8,32 || echo "FAILED hf bench opt"
timeout 150 python3 $REF bench --arch llama --batch 1,8,32 || echo "FAILED hf bench llama"

step "summary"
grep -hE "^(COMPARE|SAME|REFUSAL|BENCH|HFBENCH|FAILED)" $LOG | sed 's/^/  /'
