//! Launchers for `group_norm.cu` (to be written).
