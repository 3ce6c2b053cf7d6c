//! The CUDA C sources, embedded in the binary and compiled at run time.
//!
//! Every module is `common.cuh` followed by its own file; the shared header
//! holds the strided-index helper and the block reductions.

/// Definitions every module starts with.
pub const COMMON: &str = include_str!("common.cuh");

/// `(module name, source)` of every kernel family.
pub const SOURCES: &[(&str, &str)] = &[
    ("elementwise", include_str!("../elementwise/elementwise.cu")),
    ("reduce", include_str!("../reduce/reduce.cu")),
    ("index", include_str!("../index/index.cu")),
    ("random", include_str!("../random/random.cu")),
    ("conv", include_str!("../conv/conv.cu")),
    ("group_norm", include_str!("../group_norm/group_norm.cu")),
    ("upsample", include_str!("../upsample/upsample.cu")),
    ("noise", include_str!("../noise/noise.cu")),
    ("optim", include_str!("../optim/optim.cu")),
    ("attention", include_str!("../attention/attention.cu")),
];

/// The full source of `module` (header + body), or `None` if unknown.
pub fn source(module: &str) -> Option<String> {
    SOURCES
        .iter()
        .find(|(name, _)| *name == module)
        .map(|(_, body)| format!("{COMMON}\n{body}"))
}
