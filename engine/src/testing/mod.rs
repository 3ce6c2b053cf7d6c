//! Test support shared by every test binary and benchmark of the workspace:
//! seeded test data, tolerance checks, and the device loop ([`device`]:
//! CUDA against CPU, on a GPU or the CUDA emulator).
//!
//! Compiled only with the `test-support` feature, which only
//! dev-dependencies enable (this crate's and the root crate's), so no
//! release binary contains it or the emulator it brings.

pub mod device;

pub use device::{compare_devices, gpu_or_skip, is_emulated, scaled_error};

use crate::{DType, Device, Philox, Tensor};

/// A seeded standard-normal f32 tensor on the CPU.
pub fn randn_f32(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, DType::F32, Device::Cpu, &mut Philox::new(seed))
        .expect("a small test tensor")
}

/// A seeded standard-normal f64 tensor on the CPU (for gradchecks).
pub fn randn_f64(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, DType::F64, Device::Cpu, &mut Philox::new(seed))
        .expect("a small test tensor")
}

/// Asserts `got` and `want` agree element by element to
/// |got − want| ≤ atol + rtol·|want| (NaN must meet NaN), naming `what` and
/// the first element that does not.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = g == w || (g - w).abs() <= atol + rtol * w.abs() || (g.is_nan() && w.is_nan());
        assert!(ok, "{what}: element {i}: got {g}, want {w}");
    }
}

/// One `#[test]` per device for a test body `fn(Device)`, like candle's
/// `test_device!`: `test_on_devices!(body, body_cpu, body_cuda)` defines
/// `body_cpu` (runs `body(Device::Cpu)`) and `body_cuda` (runs it on a GPU,
/// else on the CUDA emulator, else prints that it skipped: see
/// [`gpu_or_skip`]). The same assertions then hold on every device.
/// CUDA tensors are f32, so a shared body uses f32.
#[macro_export]
macro_rules! test_on_devices {
    ($body:ident, $cpu:ident, $cuda:ident) => {
        #[test]
        fn $cpu() {
            $body($crate::Device::Cpu)
        }

        #[test]
        fn $cuda() {
            if let Some(device) = $crate::testing::gpu_or_skip(stringify!($cuda)) {
                $body(device)
            }
        }
    };
}
