//! Launchers for `index.cu` (to be written).
