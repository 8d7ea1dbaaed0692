#!/usr/bin/env bash
# The installed kiln as its users get it (CTest: install, label slow): `cmake --install` into a
# temporary prefix, which is then moved (nothing may point into the build tree or at the prefix
# it was installed to), and from there
#  - examples/host_cmake configured with find_package(kiln) against it, built with kiln::kiln and
#    kiln::kiln_static, trains examples/linear_toy.kiln to the values of seed 001 §1.2.1;
#  - the same program built with `pkg-config --cflags --libs kiln`, and statically from libkiln.a
#    with `pkg-config --static` (kiln.pc's Libs.private must be all libkiln.a needs);
#  - the installed `kiln build` links a trainer with the installed runtime ($KILN_HOME overrides);
#  - `man -l` renders kiln(1), which lists every option `kiln --help` does.
# Usage: install_test.sh BUILD_DIR SOURCE_DIR LIBDIR VERSION CC
set -euo pipefail
build=$1 src=$2 libdir=$3 version=$4 cc=$5
tmp=$(cd -P "$(mktemp -d /tmp/kiln_install_XXXXXX)" && pwd)
trap 'rm -rf "$tmp"' EXIT
export XDG_CACHE_HOME=$tmp/cache
fail() { echo "install_test: FAIL: $*" >&2; exit 1; }

cmake --install "$build" --prefix "$tmp/staged" >/dev/null
mv "$tmp/staged" "$tmp/prefix"
P=$tmp/prefix
for f in bin/kiln include/kiln.h include/kiln_abi.h "$libdir/libkiln.a" "$libdir/libkiln.so" \
         "$libdir/kiln/runtime/libkilnrt.a" "$libdir/kiln/runtime/trainer_main.c" \
         "$libdir/kiln/runtime/kiln_abi.h" "$libdir/kiln/runtime/runtime.h" \
         "$libdir/kiln/runtime/mpi_comm.c" \
         "$libdir/pkgconfig/kiln.pc" "$libdir/cmake/kiln/kilnConfig.cmake" \
         "$libdir/cmake/kiln/kilnConfigVersion.cmake" share/man/man1/kiln.1; do
  [ -e "$P/$f" ] || fail "$f is not installed"
done
# libkiln.so -> libkiln.so.0 -> libkiln.so.0.x.y, whose soname is libkiln.so.0
major=${version%%.*}
[ "$(readlink "$P/$libdir/libkiln.so")" = "libkiln.so.$major" ] || fail "libkiln.so link"
[ "$(readlink "$P/$libdir/libkiln.so.$major")" = "libkiln.so.$version" ] || fail "soname link"
readelf -d "$P/$libdir/libkiln.so.$version" | grep -q "SONAME.*\[libkiln.so.$major\]" ||
  fail "soname of libkiln.so.$version"
# the shared library exports the kiln_* API and nothing else
others=$(nm -D --defined-only "$P/$libdir/libkiln.so" | awk '{print $3}' | grep -v '^kiln_' || true)
[ -z "$others" ] || fail "libkiln.so exports more than kiln_*: $others"

# What train_file prints for linear_toy: the loss falls at every step to the seed's values.
check_toy() { # OUTPUT WHAT
  local out=$1 what=$2
  [ "$(sed -n 1p <<<"$out")" = "step 1 loss=50" ] || fail "$what: first step: $out"
  [ "$(sed -n 15p <<<"$out")" = "step 15 loss=1.8038e-08" ] || fail "$what: 15th step: $out"
  awk -F'loss=' '/^step/ { if (NR > 1 && $2 + 0 >= last) bad = 1; last = $2 + 0 }
                 END { exit bad }' <<<"$out" || fail "$what: the loss does not fall: $out"
  [ "$(tail -n 2 <<<"$out")" = $'w = 0.370367 1.296285\nb = 1.185184' ] ||
    fail "$what: parameters: $out"
}
toy=$src/examples/linear_toy.kiln

# find_package(kiln) from the moved prefix
cmake -S "$src/examples/host_cmake" -B "$tmp/host" -DCMAKE_PREFIX_PATH="$P" \
  -DCMAKE_C_COMPILER="$cc" -DCMAKE_BUILD_TYPE=Release >"$tmp/host.log" 2>&1 ||
  { cat "$tmp/host.log"; fail "configuring examples/host_cmake"; }
cmake --build "$tmp/host" >>"$tmp/host.log" 2>&1 || { cat "$tmp/host.log"; fail "building it"; }
check_toy "$("$tmp/host/train_file" "$toy")" "kiln::kiln"
check_toy "$("$tmp/host/train_file_static" "$toy")" "kiln::kiln_static"
readelf -d "$tmp/host/train_file_static" | grep -q 'NEEDED.*libkiln' &&
  fail "train_file_static needs libkiln.so"

# pkg-config, shared and static
export PKG_CONFIG_PATH=$P/$libdir/pkgconfig
[ "$(pkg-config --modversion kiln)" = "$version" ] || fail "pkg-config --modversion kiln"
# shellcheck disable=SC2046
"$cc" "$src/examples/host_cmake/train_file.c" $(pkg-config --cflags --libs kiln) \
  -Wl,-rpath,"$P/$libdir" -o "$tmp/pc_shared"
check_toy "$("$tmp/pc_shared" "$toy")" "pkg-config --libs"
static_libs=$(pkg-config --static --libs kiln | sed -E 's/(^| )-lkiln( |$)/ /')
# shellcheck disable=SC2046,SC2086
"$cc" "$src/examples/host_cmake/train_file.c" $(pkg-config --cflags kiln) "$P/$libdir/libkiln.a" \
  $static_libs -o "$tmp/pc_static"
readelf -d "$tmp/pc_static" | grep -q 'NEEDED.*libkiln' && fail "pc_static needs libkiln.so"
check_toy "$("$tmp/pc_static" "$toy")" "pkg-config --static --libs"

# the installed kiln builds a trainer with the installed runtime, from anywhere
cd "$tmp"
"$P/bin/kiln" --verbose build "$toy" -o "$tmp/toy" 2>"$tmp/build.err" ||
  { cat "$tmp/build.err"; fail "installed kiln build"; }
grep -qx "kiln: trainer runtime $P/$libdir/kiln/runtime" "$tmp/build.err" ||
  fail "the installed kiln did not use the installed runtime: $(cat "$tmp/build.err")"
[ "$("$tmp/toy" | tail -n 1)" = "final steps=15 loss=1.8038e-08" ] || fail "the installed trainer"
set +e
KILN_HOME=$tmp/nowhere "$P/bin/kiln" build "$toy" -o "$tmp/toy2" 2>"$tmp/home.err"
rc=$?
set -e
[ $rc = 1 ] && grep -q "the runtime directory $tmp/nowhere lacks" "$tmp/home.err" ||
  fail "\$KILN_HOME does not override (exit $rc): $(cat "$tmp/home.err")"

# kiln(1) renders, from the same text as kiln --help: every option of one is in the other
man_text=$(MANWIDTH=80 man -l "$P/share/man/man1/kiln.1" 2>/dev/null)
for want in "kiln - compiles" "SYNOPSIS" "EXIT STATUS" "ENVIRONMENT" "TRAINER OPTIONS"; do
  grep -q -- "$want" <<<"$man_text" || fail "kiln(1) has no '$want'"
done
help_options=$("$P/bin/kiln" --help | grep -oE '^  (--[a-z-]+|-[a-zA-Z0-9]+)' | sort -u)
[ "$(wc -l <<<"$help_options")" -gt 40 ] || fail "kiln --help lists few options: $help_options"
for o in $help_options; do
  grep -qE -- "(^|[ ,])$o([ =,]|$)" <<<"$man_text" || fail "kiln(1) lacks $o"
done
echo "install_test: installed, moved, and used through CMake, pkg-config, kiln build and man"
