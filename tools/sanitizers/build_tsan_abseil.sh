#!/usr/bin/env bash
# Builds Debian's own abseil (the source package of the installed
# libabsl-dev, with Debian's patches) with -fsanitize=thread into PREFIX,
# once, so that ./moe test --sanitize=thread can put it in front of the
# system's libabsl_*.so.20220623 (same sonames, same options). Without it
# ThreadSanitizer cannot see absl::Mutex and reports everything such a
# mutex guards as racy.
#   tools/sanitizers/build_tsan_abseil.sh PREFIX
# Needs Debian's source archive: adds a deb-src entry for it when none is
# configured (as root).
set -euo pipefail
PREFIX="${1:?usage: build_tsan_abseil.sh PREFIX}"
say() { echo "==> build_tsan_abseil: $*"; }
if [ -f "$PREFIX/.done" ]; then
  exit 0
fi
version=$(dpkg-query -W -f='${Version}' libabsl-dev)
work=$(mktemp -d /tmp/moe-absl-tsan.XXXXXX)
trap 'rm -rf "$work"' EXIT
if ! apt-get source --print-uris abseil >/dev/null 2>&1 ||
   [ -z "$(apt-get source --print-uris abseil 2>/dev/null | grep orig)" ]; then
  say "adding Debian's source archive (deb-src) to apt"
  sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
    > /etc/apt/sources.list.d/moe-deb-src.sources
  apt-get update -qq
fi
say "fetching the source of abseil $version (Debian's)"
(cd "$work" && apt-get source --download-only "abseil=$version" >/dev/null 2>&1 &&
  dpkg-source -x ./*.dsc src >/dev/null)
say "building it with -fsanitize=thread into $PREFIX (a few minutes, once)"
cmake -S "$work/src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_CXX_STANDARD=17 -DBUILD_SHARED_LIBS=ON -DBUILD_TESTING=OFF \
  -DCMAKE_CXX_FLAGS="-fsanitize=thread -fno-omit-frame-pointer" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=thread" \
  -DCMAKE_INSTALL_PREFIX="$PREFIX" -DCMAKE_INSTALL_LIBDIR=lib >/dev/null
cmake --build "$work/build" --parallel "$(nproc)" >/dev/null
cmake --install "$work/build" >/dev/null
touch "$PREFIX/.done"
say "done: $(ls "$PREFIX"/lib/libabsl_*.so.* | wc -l) libraries in $PREFIX/lib"
