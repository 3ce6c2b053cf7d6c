//! Launchers for `reduce.cu` (to be written).
