//! Launchers for `noise.cu` (to be written).
