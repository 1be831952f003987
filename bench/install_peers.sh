#!/usr/bin/env bash
# Build the same-run peer of the benchmarks, llama.cpp through llama-cpp-python, from source: native flags
# (whatever SIMD this CPU has) but AMX off in both the C and the C++ flags. cpuid advertises AMX on machines
# whose OS does not grant it, where llama.cpp's AMX kernels fault on ldtilecfg. Takes several minutes.
set -euo pipefail
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
export CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_AMX=OFF -DCMAKE_C_FLAGS='${NO_AMX}' -DCMAKE_CXX_FLAGS='${NO_AMX}'"
export FORCE_CMAKE=1
pip install --no-binary llama-cpp-python --no-cache-dir "$(dirname "$0")/..[peers]"
