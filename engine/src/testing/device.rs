//! CUDA against CPU: the same function run on both devices, outputs and
//! gradients compared.
//!
//! Every CUDA op is tested this way on fresh random inputs: `f` runs on f32
//! CPU leaves and on copies of them on the GPU; then L = Σ f(x) ⊙ w for a
//! fixed random `w` is back-propagated on both, and every input's gradient
//! is compared too. The error measure scales with the data (as llm.c does):
//! max |gpu − cpu| / max(max |cpu|, 1), so a 1e-5 tolerance means "agrees
//! to about single precision" whatever the magnitudes.
//!
//! Part of the test support ([`super`]). Without a GPU, [`gpu_or_skip`] turns on the
//! CUDA emulator (the same `.cu` kernels and launchers, run on the CPU; see
//! `noisegrad_kernels::cuda::emu`) and the tests run on it. Where the
//! emulator cannot run either (no g++, or `NOISEGRAD_NO_EMULATOR=1`), it
//! prints that the test skipped and returns `None`.

use crate::error::{Error, Result};
use crate::{DType, Device, Tensor};
use noisegrad_kernels::cuda::{CudaDevice, emulation_requested, use_emulator_if_no_gpu};
use noisegrad_kernels::rng::Philox;

/// `Some(Device::Cuda(0))` when a GPU is usable, or else when the CUDA
/// emulator is (printing `<test>: running on the CUDA emulator (no GPU)`);
/// otherwise prints `<test>: SKIPPED (...)` and returns `None`.
///
/// # Panics
/// When `NOISEGRAD_REQUIRE_GPU=1` (set by `scripts/gpu_suite.sh run`) and no
/// GPU is usable: on the GPU machine neither a skip nor the emulator may
/// stand in for a broken setup. When `NOISEGRAD_REQUIRE_EMULATOR=1` (set by
/// CI) and the test would skip: there, a missing g++ must not quietly turn
/// every CUDA test into a skip.
pub fn gpu_or_skip(test: &str) -> Option<Device> {
    if Device::cuda_available() && !emulation_requested() {
        return Some(Device::Cuda(0));
    }
    if std::env::var("NOISEGRAD_REQUIRE_GPU").is_ok_and(|v| v == "1") {
        panic!("{test}: NOISEGRAD_REQUIRE_GPU=1 but no CUDA device is usable");
    }
    if use_emulator_if_no_gpu() {
        eprintln!("{test}: running on the CUDA emulator (no GPU)");
        return Some(Device::Cuda(0));
    }
    if std::env::var("NOISEGRAD_REQUIRE_EMULATOR").is_ok_and(|v| v == "1") {
        panic!(
            "{test}: NOISEGRAD_REQUIRE_EMULATOR=1 but neither a GPU nor the CUDA emulator \
             (which needs g++, and NOISEGRAD_NO_EMULATOR unset) is usable"
        );
    }
    eprintln!("{test}: SKIPPED (no CUDA device on this machine, and no CUDA emulator: needs g++)");
    None
}

/// Whether `cuda:0` is (or will be, once opened) the CUDA emulator. Tests
/// use it to shrink work that is too slow to emulate.
pub fn is_emulated() -> bool {
    match CudaDevice::get(0) {
        Ok(dev) => dev.is_emulated(),
        Err(_) => emulation_requested(),
    }
}

/// max |a − b| / max(max |b|, 1) over two equal-length slices.
pub fn scaled_error(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "scaled_error: lengths differ");
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let worst = a.iter().zip(b).fold(0.0f64, |m, (x, y)| {
        let d = (x - y).abs();
        if d.is_nan() { f64::INFINITY } else { m.max(d) }
    });
    worst / scale
}

/// The worst scaled errors found by [`compare_devices`].
#[derive(Clone, Debug, Default)]
pub struct DeviceReport {
    pub output_err: f64,
    /// One per input (0 for inputs that take no gradient).
    pub grad_errs: Vec<f64>,
}

/// Runs `f` on CPU and on `gpu` with the same f32 inputs; compares outputs
/// and (for `inputs` marked in `grad`) gradients. Errors above `tol` are
/// returned as an error naming what disagreed and by how much.
pub fn compare_devices(
    name: &str,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    grad: &[bool],
    gpu: Device,
    tol: f64,
) -> Result<DeviceReport> {
    let leaves = |device: Device| -> Result<Vec<Tensor>> {
        inputs
            .iter()
            .zip(grad)
            .map(|(t, &g)| {
                let x = t.detach().to_dtype(DType::F32)?.to_device(device)?;
                Ok(if g { x.set_requires_grad(true) } else { x })
            })
            .collect()
    };
    let (cpu_in, gpu_in) = (leaves(Device::Cpu)?, leaves(gpu)?);
    let (cpu_out, gpu_out) = (f(&cpu_in)?, f(&gpu_in)?);
    if gpu_out.device() != gpu {
        return Err(Error::CheckFailed(format!(
            "{name}: output landed on {} instead of {gpu}",
            gpu_out.device()
        )));
    }
    let mut report = DeviceReport {
        output_err: scaled_error(&gpu_out.to_host_f64()?, &cpu_out.to_vec_f64()),
        grad_errs: vec![0.0; inputs.len()],
    };
    check(name, "output", report.output_err, tol)?;
    if !grad.iter().any(|&g| g) {
        return Ok(report);
    }
    let mut rng = Philox::new(0x6465_7669);
    let w = Tensor::randn(cpu_out.shape(), DType::F32, Device::Cpu, &mut rng)?;
    cpu_out.mul(&w)?.sum_all()?.backward()?;
    gpu_out.mul(&w.to_device(gpu)?)?.sum_all()?.backward()?;
    for (i, (c, g)) in cpu_in.iter().zip(&gpu_in).enumerate() {
        if !grad[i] {
            continue;
        }
        let (gc, gg) = match (c.grad(), g.grad()) {
            (Some(gc), Some(gg)) => (gc, gg),
            (None, None) => continue,
            _ => {
                return Err(Error::CheckFailed(format!(
                    "{name}: input {i} has a gradient on one device only"
                )));
            }
        };
        report.grad_errs[i] = scaled_error(&gg.to_host_f64()?, &gc.to_vec_f64());
        check(
            name,
            &format!("gradient of input {i}"),
            report.grad_errs[i],
            tol,
        )?;
    }
    Ok(report)
}

fn check(name: &str, what: &str, err: f64, tol: f64) -> Result<()> {
    if err <= tol {
        Ok(())
    } else {
        Err(Error::CheckFailed(format!(
            "{name}: {what} differs between CUDA and CPU: scaled error {err:.3e} > {tol:.1e}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::scaled_error;

    #[test]
    fn scaled_error_is_relative_to_the_reference_scale() {
        assert_eq!(scaled_error(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((scaled_error(&[100.0, 0.0], &[100.1, 0.0]) - 0.1 / 100.1).abs() < 1e-12);
        assert!((scaled_error(&[0.001], &[0.0]) - 0.001).abs() < 1e-12);
        assert!(scaled_error(&[f64::NAN], &[0.0]).is_infinite());
    }
}
