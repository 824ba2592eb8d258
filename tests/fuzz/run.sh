#!/usr/bin/env bash
# Sanitizer runs of the C core (CPU build), gcc only (libasan/libubsan; no clang, so no libFuzzer):
#   bash tests/fuzz/run.sh [fuzz|ops|valgrind|all ...]   (default: fuzz)
#     fuzz      build tests/fuzz/fuzz_c_api.c with csrc/*.c (not module.c) under -fsanitize=address,undefined and run
#               it over several seeds (FUZZ_SEEDS, default "1 2 3 4"; FUZZ_ITERS per seed, default 50000)
#     ops       build the extension with SSMTP_SANITIZE=1 into its own folder and run the C-op tests
#               (tests/test_ops_cpu.py, tests/test_ops_ssd.py) against it with libasan preloaded
#     valgrind  the fuzz driver without sanitizers under valgrind memcheck (uninitialised reads, which ASan does not
#               see; VALGRIND_ITERS, default 3000). The op tests run under ASan instead (torch under valgrind is slow)
# Work files go to $FUZZ_BUILD (default /tmp/ssmtp-sanitize); the in-place extension (ssmtp/_C*.so) is not touched.
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${FUZZ_BUILD:-/tmp/ssmtp-sanitize}
mkdir -p "$B"
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(fuzz)
want() { for s in "${steps[@]}"; do [ "$s" = all ] || [ "$s" = "$1" ] && return 0; done; return 1; }
SRCS=$(ls csrc/*.c | grep -v 'csrc/module.c')
SAN="-fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
CFLAGS_FUZZ="-std=c99 -Wall -Wextra -Wno-unused-parameter -Werror -O1 -Icsrc"

build_fuzz() {
  echo "== build $B/fuzz_c_api (ASan + UBSan)"
  gcc $CFLAGS_FUZZ $SAN -o "$B/fuzz_c_api" tests/fuzz/fuzz_c_api.c $SRCS -ldl -lm -lpthread
  gcc -std=c99 -O1 -g -shared -fPIC -o "$B/libfakenccl.so" tests/fuzz/fake_nccl.c
}

if want fuzz; then
  build_fuzz
  for seed in ${FUZZ_SEEDS:-1 2 3 4}; do
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
      "$B/fuzz_c_api" -s "$seed" -n "${FUZZ_ITERS:-50000}" ${FUZZ_TIME:+-t $FUZZ_TIME} -l "$B/libfakenccl.so"
  done
fi

if want ops; then
  echo "== build the ASan + UBSan extension into $B/ext"
  rm -rf "$B/ext" "$B/pkg"
  SSMTP_SKIP_CUDA=1 SSMTP_SANITIZE=1 python setup.py -q build_ext --build-lib "$B/ext" --build-temp "$B/ext-tmp"
  # a copy of the Python package around the instrumented extension, imported first through PYTHONPATH
  mkdir -p "$B/pkg"
  (cd . && tar cf - --exclude='_C*.so' --exclude=__pycache__ ssmtp) | tar xf - -C "$B/pkg"
  cp "$B"/ext/ssmtp/_C*.so "$B/pkg/ssmtp/"
  here=$PWD
  # libstdc++ preloaded next to libasan: otherwise ASan's __cxa_throw interceptor finds no real one (libstdc++ comes
  # in later with torch) and the first C++ exception torch throws aborts the process
  preload="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
  # from another folder, so that neither the checkout nor the installed copy shadows $B/pkg
  (cd "$B" && PYTHONPATH="$B/pkg" LD_PRELOAD="$preload" \
     ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
     python -c "import ssmtp, ssmtp._C as C; assert C.__file__.startswith('$B/pkg'), C.__file__; print('ASan build:', C.__file__)" &&
   PYTHONPATH="$B/pkg" LD_PRELOAD="$preload" \
     ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
     python -m pytest -q -p no:cacheprovider -x "$here/tests/test_ops_cpu.py" "$here/tests/test_ops_ssd.py" ${OPS_PYTEST_ARGS:-})
fi

if want valgrind; then
  command -v valgrind >/dev/null || { echo "valgrind not installed"; exit 1; }
  echo "== fuzz driver under valgrind memcheck (no sanitizers)"
  gcc $CFLAGS_FUZZ -g -o "$B/fuzz_c_api_plain" tests/fuzz/fuzz_c_api.c $SRCS -ldl -lm -lpthread
  gcc -std=c99 -O1 -g -shared -fPIC -o "$B/libfakenccl.so" tests/fuzz/fake_nccl.c
  valgrind -q --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite \
    "$B/fuzz_c_api_plain" -s 7 -n "${VALGRIND_ITERS:-3000}" -l "$B/libfakenccl.so"
fi
