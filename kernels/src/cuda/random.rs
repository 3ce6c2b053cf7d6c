//! Launchers for `random.cu` (to be written).
