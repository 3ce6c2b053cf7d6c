//! Launchers for `gemm.cu` (to be written).
