"""Build of ssmtp: a pure-Python package plus the CPython extension ``ssmtp._C``.

The extension is C99 (csrc/*.c) and, when nvcc is found, CUDA C (csrc/cuda/*.cu) linked against the static CUDA
runtime. It links neither libtorch nor NCCL (NCCL is resolved at run time from the copy torch loaded).

Build knobs (environment variables), echoed at build time:
  SSMTP_SKIP_CUDA=1        build the CPU-only extension even when nvcc is present
  SSMTP_CUDA_ARCHS="80;90" SM list for machine code; PTX is embedded for the last one (default "80;90")
  SSMTP_DEBUG=1            -O0 -g, host asserts, and nvcc -lineinfo
  SSMTP_SANITIZE=1         instrument the C sources with AddressSanitizer + UBSan (run under
                           libasan.so and libstdc++.so preloaded, see tests/fuzz/run.sh); build it into its own
                           --build-lib / --build-temp so that the in-place extension stays a normal one
  SSMTP_CUDA_REBUILD=1     recompile every .cu (objects in build/cuda/<archs>/ are otherwise reused while the hash
                           of their source, the headers and the nvcc command is unchanged)
  CUDA_HOME / nvcc on PATH where the CUDA toolkit is
"""
import glob
import hashlib
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
C_SOURCES = sorted(glob.glob("csrc/*.c"))
CU_SOURCES = sorted(glob.glob("csrc/cuda/*.cu"))
SM90A_SOURCES = {"linear_wg.cu"}


def _log(msg):
    print(f"[ssmtp build] {msg}", flush=True)


def _truthy(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _find_cuda():
    """Return (cuda_home, nvcc) or (None, reason)."""
    if _truthy("SSMTP_SKIP_CUDA"):
        return None, "SSMTP_SKIP_CUDA is set"
    if not CU_SOURCES:
        return None, "no csrc/cuda/*.cu sources"
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        return None, "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
    nvcc = os.path.realpath(nvcc)
    if not home:
        # /usr/local/bin/nvcc may be a wrapper script; ask nvcc where it lives.
        home = os.path.dirname(os.path.dirname(nvcc))
        try:
            out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                                 capture_output=True, text=True).stderr
            for line in out.splitlines():
                if line.startswith("#$ TOP="):
                    home = os.path.realpath(line.split("TOP=", 1)[1].strip())
        except OSError:
            pass
    libdir = next((d for d in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib")
                   if os.path.exists(os.path.join(home, d, "libcudart_static.a"))), None)
    if libdir is None:
        return None, f"libcudart_static.a not found under {home}"
    return (home, nvcc, os.path.join(home, libdir)), None


class BuildExt(build_ext):
    def build_extensions(self):
        ext = self.extensions[0]
        debug = _truthy("SSMTP_DEBUG")
        cflags = ["-std=c99", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden"]
        cflags += ["-O0", "-g", "-DSSMTP_DEBUG=1"] if debug else ["-O3"]
        if _truthy("SSMTP_SANITIZE"):
            san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]
            cflags += san
            ext.extra_link_args = list(ext.extra_link_args or []) + san
            _log("SANITIZE: AddressSanitizer + UBSan on the C sources (preload libasan.so to import the module)")
        cuda, why_not = _find_cuda()
        if cuda is None:
            _log(f"CUDA: skipped ({why_not}); building the CPU-only extension")
        else:
            home, nvcc, libdir = cuda
            archs = [a.strip() for a in os.environ.get("SSMTP_CUDA_ARCHS", "80;90").replace(",", ";").split(";")
                     if a.strip()]
            _log(f"CUDA: nvcc={nvcc} archs={archs} (+PTX for {archs[-1]}) debug={debug}")
            gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
            gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
            # Sources named in SM90A_SOURCES use sm_90a instructions (wgmma): with 90 among the archs they are built
            # for sm_90a only (the arch-specific target, which no other GPU runs) and told so by SSMTP_WG_BUILT;
            # otherwise with the common targets, where their kernels are stubs the launchers never start.

            def gencode_of(src):
                if os.path.basename(src) not in SM90A_SOURCES or "90" not in archs:
                    return gencode
                return ["-gencode=arch=compute_90a,code=sm_90a", "-DSSMTP_WG_BUILT=1"]

            # Objects go to a folder keyed by arch list and debug flag, independent of the Python version, and are
            # reused while the hash of source + headers + command is unchanged (an incremental build that survives
            # copying the tree elsewhere; SSMTP_CUDA_REBUILD=1 forces a rebuild).
            build_tmp = os.path.join(HERE, "build", "cuda", "-".join(archs) + ("-debug" if debug else ""))
            os.makedirs(build_tmp, exist_ok=True)
            headers = sorted(glob.glob(os.path.join(HERE, "csrc", "*.h")) +
                             glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cuh")))
            hdr_hash = hashlib.sha256()
            for h in headers:
                with open(h, "rb") as f:
                    hdr_hash.update(f.read())
            nvflags = ["-std=c++17", "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden", "-Icsrc",
                       "-DSSMTP_WITH_CUDA=1", "--expt-relaxed-constexpr", "-lineinfo"]
            nvflags += ["-O0", "-g", "-DSSMTP_DEBUG=1"] if debug else ["-O3"]

            def compile_one(src):
                obj = os.path.join(build_tmp, os.path.basename(src) + ".o")
                cmd = [nvcc, "-c", src, "-o", obj] + nvflags + gencode_of(src)
                key = hdr_hash.copy()
                with open(src, "rb") as f:
                    key.update(f.read())
                key.update(" ".join(cmd).encode())
                key = key.hexdigest()
                stamp = obj + ".key"
                if (not _truthy("SSMTP_CUDA_REBUILD") and os.path.exists(obj) and os.path.exists(stamp)
                        and open(stamp).read() == key):
                    _log(f"nvcc {src}: up to date ({obj})")
                    return obj
                _log("nvcc " + src)
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode != 0:
                    sys.stderr.write(res.stdout + res.stderr)
                    raise RuntimeError(f"nvcc failed on {src}")
                with open(stamp, "w") as f:
                    f.write(key)
                return obj

            with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
                objs = list(pool.map(compile_one, CU_SOURCES))
            ext.extra_objects = objs + [os.path.join(libdir, "libcudart_static.a")]
            ext.libraries = ["stdc++", "rt", "pthread", "dl"]
            cflags += ["-DSSMTP_WITH_CUDA=1", f'-DSSMTP_CUDA_ARCHS_STR="{";".join(archs)}"']
            if "90" in archs:
                cflags.append("-DSSMTP_WG_BUILT=1")
            ext.include_dirs.append(os.path.join(home, "include"))
        ext.extra_compile_args = cflags
        ext.libraries = list(dict.fromkeys((ext.libraries or []) + ["dl", "m"]))
        _log(f"C: {len(C_SOURCES)} sources, flags {' '.join(cflags)}")
        # The C sources are few and quick; always recompile them, since their flags depend on the CUDA decision
        # (distutils would otherwise relink stale objects built with other defines).
        self.force = True
        super().build_extensions()


setup(
    ext_modules=[Extension("ssmtp._C", sources=C_SOURCES, include_dirs=["csrc"])],
    cmdclass={"build_ext": BuildExt},
)
