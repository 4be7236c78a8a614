# Shared set-up of the device check scripts (calibrate-check.sh, inject-check.sh), sourced after
# `set -u` with NAME set to the script's short name and the script's arguments in "$@":
# NVLink multicast off, the repository root as working folder, OUTDIR ($1, else $OUT, else
# ./NAME-out; created, made absolute), LOG ($OUTDIR/NAME-check.log), BIN (the carried computron
# in $PREBUILT, which must be set) and the CUDA libraries on the loader path.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
OUTDIR=${1:-${OUT:-$ROOT/$NAME-out}}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
LOG=$OUTDIR/$NAME-check.log
: "${PREBUILT:?set PREBUILT to the folder with the carried computron (static Boost, runtime linked in)}"
BIN=$PREBUILT/computron
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}
