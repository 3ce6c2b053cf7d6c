//! Launchers for `optim.cu` (to be written).
