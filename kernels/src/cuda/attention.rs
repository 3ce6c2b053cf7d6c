//! Launchers for `attention.cu` (to be written).
