"""Finds the CUDA libraries noisegrad loads at run time (stage 1 of scripts/gpu_suite.sh).

noisegrad links against nothing: cudarc dlopens libcuda (the driver),
libnvrtc (the run-time compiler, with libnvrtc-builtins) and libcublas (with
libcublasLt) by their plain or major-versioned names. On the GPU machine
they may live in the CUDA toolkit, the driver's folder, or the nvidia-* pip
packages PyTorch came with, not all of which are on the loader's path.

For each library this prints where it was found, adds the folders the loader
would not search on its own to LD_LIBRARY_PATH, and checks in a fresh
process that every library then loads by the names cudarc asks for. It also
prints the driver's CUDA version and NVRTC's: PTX from an NVRTC newer than
the driver cannot be loaded, so among several libnvrtc the newest one the
driver accepts is chosen. Standard library only (runs before anything else).

Last line of stdout: `LD_LIBRARY_PATH=...` for the shell to export.
Exit status: 0 when every library loads, 1 otherwise (the report says which).
"""
import ctypes
import glob
import importlib.util
import json
import os
import subprocess
import sys

# Library -> the file names cudarc's loader tries (CUDA 13), most specific first.
LIBS = {
    "libcuda": ["libcuda.so.1", "libcuda.so"],
    "libnvrtc": ["libnvrtc.so.13", "libnvrtc.so"],
    "libcublas": ["libcublas.so.13", "libcublas.so"],
    "libcublasLt": ["libcublasLt.so.13", "libcublasLt.so"],
}


def pip_nvidia_dirs():
    """The lib folders of the nvidia-* pip packages (e.g. nvidia/cu13/lib)."""
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations or []) if spec else []
    dirs = []
    for root in roots:
        dirs += sorted(glob.glob(os.path.join(root, "*", "lib")))
        dirs += sorted(glob.glob(os.path.join(root, "*", "*", "lib")))
    return dirs


def ldconfig_dirs():
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({os.path.dirname(line.split("=>")[-1].strip()) for line in out.splitlines() if "=>" in line})


def search_dirs():
    env = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    fixed = ["/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/local/cuda/lib64",
             "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib64"]
    fixed += sorted(glob.glob("/usr/local/cuda-*/lib64"))
    seen, dirs = set(), []
    for d in env + ldconfig_dirs() + fixed + pip_nvidia_dirs():
        if d not in seen and os.path.isdir(d):
            seen.add(d)
            dirs.append(d)
    return dirs


# Loads argv[1] and prints [CUDA version or null, the file the loader used].
PROBE = r"""
import ctypes, json, os, sys
path, kind = sys.argv[1], sys.argv[2]
lib = ctypes.CDLL(path)
v, ver = ctypes.c_int(0), None
if kind == "libcuda":
    lib.cuDriverGetVersion(ctypes.byref(v)); ver = v.value
elif kind == "libnvrtc":
    a, b = ctypes.c_int(0), ctypes.c_int(0)
    lib.nvrtcVersion(ctypes.byref(a), ctypes.byref(b)); ver = a.value * 1000 + b.value * 10
base = os.path.basename(path)
used = [l.split()[-1] for l in open("/proc/self/maps") if os.path.basename(l.split()[-1]).startswith(base)]
print(json.dumps([ver, used[0] if used else path]))
"""


def probe(path, kind, env=None):
    """(loads?, CUDA version as 13000-style int or None, error or the file
    loaded) in a fresh process.

    A path is probed with its own folder on the loader's path, where the
    libraries it needs (libcublasLt beside libcublas) usually are."""
    if env is None:
        old = os.environ.get("LD_LIBRARY_PATH", "")
        env = dict(os.environ, LD_LIBRARY_PATH=os.path.dirname(path) + (":" + old if old else ""))
    r = subprocess.run([sys.executable, "-c", PROBE, path, kind], capture_output=True, text=True, timeout=30, env=env)
    if r.returncode != 0:
        return False, None, (r.stderr.strip().splitlines() or ["?"])[-1]
    ver, used = json.loads(r.stdout.strip())
    return True, ver, used


def candidates(kind, dirs):
    hits = []
    for d in dirs:
        for name in LIBS[kind]:
            p = os.path.join(d, name)
            if os.path.exists(p) and p not in hits:
                hits.append(p)
    return hits


def version(v):
    return "?" if v is None else f"{v // 1000}.{v % 1000 // 10}"


def main():
    dirs = search_dirs()
    chosen, driver = {}, None
    for kind in ["libcuda", "libnvrtc", "libcublas", "libcublasLt"]:
        found = []
        for p in candidates(kind, dirs):
            ok, v, err = probe(p, kind)
            print(f"  {kind:12s} {'loads' if ok else 'FAILS'}  {p}" + (f"  (CUDA {version(v)})" if v else "") + ("" if ok else f"  {err}"))
            if ok:
                found.append((p, v))
        if kind == "libcuda" and found:
            driver = found[0][1]
        if kind == "libnvrtc" and found and driver:
            accepted = [f for f in found if f[1] is not None and f[1] <= driver]
            if accepted:
                found = sorted(accepted, key=lambda f: -f[1])
            else:
                print(f"  WARNING: every libnvrtc is newer than the driver's CUDA {version(driver)}: its PTX will not load")
        if kind == "libcublasLt" and "libcublas" in chosen:
            # cuBLAS needs the cuBLASLt of its own release: the one beside it.
            beside = [f for f in found if os.path.dirname(f[0]) == os.path.dirname(chosen["libcublas"])]
            found = beside or found
        if found:
            chosen[kind] = found[0][0]
    env_dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    default = set(ldconfig_dirs())
    for p in chosen.values():
        d = os.path.dirname(p)
        if d not in default and d not in env_dirs:
            env_dirs.insert(0, d)
    ld_path = ":".join(env_dirs)
    # What the loader resolves by plain name once LD_LIBRARY_PATH is set.
    env = dict(os.environ, LD_LIBRARY_PATH=ld_path)
    all_ok = True
    report = {"driver_cuda": version(driver) if driver else None}
    for kind, names in LIBS.items():
        ok, v, used = probe(names[0], kind, env)
        all_ok &= ok
        report[kind] = used if ok else None
        print(f"{kind}: " + (f"OK, {names[0]} -> {used}" + (f" (CUDA {version(v)})" if v else "") if ok else f"NOT LOADABLE as {names[0]}: {used}"))
    print("libraries:", json.dumps(report))
    print(f"LD_LIBRARY_PATH={ld_path}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
