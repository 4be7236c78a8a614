#!/usr/bin/env bash
# Installs the Debian packages the build needs, only those missing (no network when all are there).
set -euo pipefail
packages=(g++ cmake make libboost-dev libboost-program-options-dev nlohmann-json3-dev libgtest-dev libgmock-dev
          libbenchmark-dev
          openmpi-bin libopenmpi-dev  # `mpirun -np N computron replay`: the runtime over several processes
          clang libclang-rt-dev)  # clang and its runtime: the fuzzing harnesses (scripts/fuzz.sh)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi
