//! Launchers for `conv.cu` (to be written).
