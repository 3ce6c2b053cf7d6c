//! Launchers for `upsample.cu` (to be written).
