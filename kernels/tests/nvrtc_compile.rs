//! Every CUDA source compiles with NVRTC, and every kernel a launcher names
//! exists in its module. Runs without a GPU: only libnvrtc is needed (CI
//! installs the PyPI package `nvidia-cuda-nvrtc`, see `.ci/run`). Without
//! libnvrtc the tests say they skipped, unless `NOISEGRAD_REQUIRE_NVRTC=1`
//! (set by CI) makes that a failure.

use noisegrad_kernels::cuda::compile::{compile_module, nvrtc_available};
use noisegrad_kernels::cuda::signature::parse_entries;
use noisegrad_kernels::cuda::sources::{SOURCES, source};

/// The architecture compiled for: the H100's.
const ARCH: &str = "sm_90";

fn nvrtc_or_skip(test: &str) -> bool {
    if nvrtc_available() {
        return true;
    }
    if std::env::var("NOISEGRAD_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
        panic!("{test}: libnvrtc not found but NOISEGRAD_REQUIRE_NVRTC=1");
    }
    eprintln!("{test}: SKIPPED (libnvrtc not found; see README, 'CUDA')");
    false
}

/// Kernel names passed to `launch(MODULE, "<name>", ...)` in a launcher file.
fn launched_kernels(launcher_src: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = launcher_src;
    while let Some(i) = rest.find("MODULE,") {
        rest = &rest[i + "MODULE,".len()..];
        let trimmed = rest.trim_start();
        if let Some(body) = trimmed.strip_prefix('"')
            && let Some(end) = body.find('"')
        {
            names.push(body[..end].to_string());
        }
    }
    names
}

/// The launcher file of `module`: where this crate was built, or (for a
/// binary copied to another machine by `scripts/gpu_suite.sh`) relative to
/// the repository root it runs in.
fn launcher_source(module: &str) -> String {
    let built = format!("{}/src/{module}/cuda.rs", env!("CARGO_MANIFEST_DIR"));
    let relative = format!("kernels/src/{module}/cuda.rs");
    std::fs::read_to_string(&built)
        .or_else(|_| std::fs::read_to_string(&relative))
        .unwrap_or_else(|e| panic!("{built} (or ./{relative}): {e}"))
}

#[test]
fn every_cuda_module_compiles_and_defines_the_kernels_its_launcher_names() {
    if !nvrtc_or_skip("nvrtc compile check") {
        return;
    }
    for (module, _) in SOURCES {
        let src = source(module).unwrap();
        let ptx = compile_module(module, &src, ARCH)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_src();
        let entries = parse_entries(&ptx);
        for name in launched_kernels(&launcher_source(module)) {
            assert!(
                entries.contains_key(&name),
                "launcher {module}/cuda.rs names kernel `{name}`, which {module}.cu does not define"
            );
        }
        // Every parameter must parse, or launches would report false mismatches.
        for (name, params) in &entries {
            let decl_start = ptx.find(&format!(".entry {name}(")).unwrap();
            let decl_end = decl_start + ptx[decl_start..].find(')').unwrap();
            let declared = ptx[decl_start..decl_end].matches(".param").count();
            assert_eq!(
                params.len(),
                declared,
                "{module}::{name}: unparsed parameter kinds"
            );
        }
    }
}

#[test]
fn a_broken_kernel_reports_module_and_nvrtc_log() {
    if !nvrtc_or_skip("nvrtc error report") {
        return;
    }
    let err = compile_module(
        "broken",
        "extern \"C\" __global__ void k() { int x = ; }",
        ARCH,
    )
    .expect_err("a syntax error must not compile");
    let msg = err.to_string();
    assert!(msg.contains("`broken`"), "{msg}");
    assert!(msg.contains("error"), "NVRTC's log is missing: {msg}");
}

#[test]
fn launcher_scan_finds_kernel_names() {
    let names = launched_kernels(
        "dev.launch(MODULE, \"fill\", g, &[])\n dev.launch(\n MODULE,\n \"copy_into\",",
    );
    assert_eq!(names, ["fill", "copy_into"]);
}
