//! Compiling a module for the emulator: the module's CUDA text (after
//! [`rewrite_shared`]) with `shim.h` in front and the generated
//! trampolines behind, built by g++ into one shared library per module
//! (modules may define helpers with the same names), then `dlopen`ed.
//!
//! Libraries are cached in `$TMPDIR/noisegrad-cuda-emu/`, named by the
//! module and a hash of everything that goes into them (shim, text, flags),
//! so a changed kernel or shim is rebuilt and an unchanged one is reused
//! by later processes (each test binary is one).

use super::source::{Kernel, parse_kernels, rewrite_shared, trampolines};
use crate::cuda::{CudaError, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The header every emulated module starts with.
pub const SHIM: &str = include_str!("shim.h");

/// The compiler and its flags. `-ffp-contract=off`: no a·b + c is fused
/// into an FMA, so `__fmul_rn`/`__fadd_rn` round each step; `-fno-math-errno`
/// only lets `sqrtf` be one instruction. Everything but the two entry
/// points is hidden, so the libraries' identical helpers never interpose.
const CXX: &str = "g++";
const FLAGS: &[&str] = &[
    "-std=c++20",
    "-O2",
    "-shared",
    "-fPIC",
    "-fvisibility=hidden",
    "-fno-math-errno",
    "-fno-exceptions",
];

/// `NOISEGRAD_EMU_FMA=1` fuses a·b + c into FMAs as NVRTC does by default
/// (`--fmad=true`; the contraction choices differ in detail), to see which
/// results depend on it. Needs a CPU with FMA.
fn contraction_flags() -> &'static [&'static str] {
    if std::env::var("NOISEGRAD_EMU_FMA").is_ok_and(|v| v == "1") {
        &["-ffp-contract=fast", "-mfma"]
    } else {
        &["-ffp-contract=off"]
    }
}

fn flags() -> Vec<&'static str> {
    FLAGS.iter().chain(contraction_flags()).copied().collect()
}

/// Whether g++ can be run (the emulator needs it).
pub fn compiler_available() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| {
        Command::new(CXX)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// The C++ file g++ compiles for `module` with source `src`.
pub fn translation_unit(module: &'static str, src: &str, kernels: &[Kernel]) -> Result<String> {
    let body = rewrite_shared(src).map_err(|e| compile_err(module, e))?;
    Ok(format!(
        "#include \"shim.h\"\n#line 1 \"{module}.cu\"\n{body}\n#line 1 \"{module} (emulator trampolines)\"\n{}",
        trampolines(kernels)
    ))
}

fn compile_err(module: &'static str, log: String) -> CudaError {
    CudaError::EmuCompile { module, log }
}

/// FNV-1a: a stable hash (std's may change between Rust releases) for
/// cache file names.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn cache_dir() -> PathBuf {
    std::env::temp_dir().join("noisegrad-cuda-emu")
}

/// A loaded module: its library and kernels.
pub struct Library {
    pub lib: libloading::Library,
    pub kernels: Vec<Kernel>,
    pub path: PathBuf,
}

/// Parses, compiles (unless cached) and loads `module`.
pub fn load(module: &'static str, src: &str) -> Result<Library> {
    let kernels = parse_kernels(src).map_err(|e| compile_err(module, e))?;
    let tu = translation_unit(module, src, &kernels)?;
    let hash = fnv1a(&[SHIM, &tu, CXX, &flags().join(" ")]);
    let dir = cache_dir();
    let path = dir.join(format!("{module}-{hash:016x}.so"));
    if !path.exists() {
        compile(module, &dir, &tu, &path)?;
    }
    // SAFETY: the library is ours (built from the module's text just now or
    // by an earlier process with the same hash); its initialisers only set
    // up thread-local state.
    let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| CudaError::Driver {
        op: "load module (emulator)",
        msg: format!("{}: {e}", path.display()),
    })?;
    Ok(Library { lib, kernels, path })
}

/// Writes the sources into a private directory, runs g++, and renames the
/// library into place (atomic, so concurrent processes never see half of
/// one).
fn compile(module: &'static str, dir: &Path, tu: &str, dest: &Path) -> Result<()> {
    let io = |e: std::io::Error| compile_err(module, format!("{}: {e}", dir.display()));
    static BUILDS: AtomicUsize = AtomicUsize::new(0);
    let build = BUILDS.fetch_add(1, Ordering::Relaxed);
    let work = dir.join(format!("build-{module}-{}-{build}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(io)?;
    let cpp = work.join(format!("{module}.cpp"));
    std::fs::write(work.join("shim.h"), SHIM).map_err(io)?;
    std::fs::write(&cpp, tu).map_err(io)?;
    let out = work.join(format!("{module}.so"));
    let run = Command::new(CXX)
        .args(flags())
        .arg("-o")
        .arg(&out)
        .arg(&cpp)
        .output()
        .map_err(|e| compile_err(module, format!("could not run {CXX}: {e}")))?;
    if !run.status.success() {
        let log = String::from_utf8_lossy(&run.stderr).into_owned();
        let _ = std::fs::remove_dir_all(&work);
        return Err(compile_err(module, format!("g++ failed:\n{log}")));
    }
    std::fs::rename(&out, dest).map_err(io)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_separates_parts() {
        assert_ne!(fnv1a(&["ab", "c"]), fnv1a(&["a", "bc"]));
        assert_eq!(fnv1a(&["x"]), fnv1a(&["x"]));
    }

    #[test]
    fn translation_unit_keeps_line_numbers_of_the_module() {
        let src = "extern \"C\" __global__ void k(int a) {}\n";
        let kernels = parse_kernels(src).unwrap();
        let tu = translation_unit("m", src, &kernels).unwrap();
        assert!(tu.starts_with("#include \"shim.h\"\n#line 1 \"m.cu\"\nextern"));
        assert!(tu.contains("k(*(int*)args[0]);"), "{tu}");
    }
}
