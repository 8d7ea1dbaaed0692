#!/usr/bin/env bash
# Installs what is missing, builds kiln with AddressSanitizer and UndefinedBehaviorSanitizer,
# and runs every test through CTest (including the comparison with PyTorch, python3-torch).
set -euo pipefail
cd "$(dirname "$0")"
KILN_JIT_PACKAGES="llvm-14-dev libclang-cpp14-dev libclang-14-dev g++"
# The LLVM packages build the in-process JIT backend (src/backend/jit.cpp).
# strace: test_cli checks that JIT training starts no process and writes no file.
# clang-14 and libclang-rt-14-dev: the libFuzzer harnesses (tests/fuzz), run 10^5 inputs each.
# protobuf-c-compiler, libprotobuf-c-dev, libonnx-dev: ONNX import (onnx.proto's C bindings);
# libonnx-testdata: ONNX's backend tests, run by tests/onnx_conformance.
# librsvg2-bin: test_cli renders the SVG plots kiln writes, as a viewer would.
# openmpi-bin, libopenmpi-dev: test_mpi builds trainers with --mpi and runs them under mpirun.
# graphviz: test_graph renders `kiln graph` with dot and reads the SVG.
# man-db: the install test renders the installed kiln(1) with man -l.
KILN_EXTRA_PACKAGES="protobuf-c-compiler libprotobuf-c-dev libonnx-dev libonnx-testdata python3-torch strace clang-14 libclang-rt-14-dev librsvg2-bin graphviz openmpi-bin libopenmpi-dev man-db $KILN_JIT_PACKAGES" \
  bash scripts/deps.sh
cmake -S . -B build-test -DCMAKE_BUILD_TYPE=Debug -DKILN_SANITIZE=ON >/dev/null
cmake --build build-test -j"$(nproc)"
# Generated trainers and shared objects are built by the system compiler without sanitizers;
# ASan must not insist on being first in the library list for them.
export ASAN_OPTIONS=detect_leaks=1:verify_asan_link_order=0
ctest --test-dir build-test --output-on-failure -j"$(nproc)"
# The optimised build warns about things the debug build cannot see (-Werror is on in both).
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
# kiln without LLVM (the system compiler as its only backend) must build and pass as well.
cmake -S . -B build-nojit -DCMAKE_BUILD_TYPE=Release -DKILN_JIT=OFF >/dev/null
cmake --build build-nojit -j"$(nproc)" >/dev/null
ctest --test-dir build-nojit --output-on-failure -j"$(nproc)" -E torch_compat
# Every parser and loader under libFuzzer with the sanitizers (docs/reliability.md).
bash tests/fuzz/run.sh 100000 build-fuzz
echo "kiln: all tests passed (with and without the JIT, and 10^5 fuzz inputs per target); release builds clean"
