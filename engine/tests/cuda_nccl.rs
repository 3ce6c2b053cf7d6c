//! The NCCL communicator (feature `nccl`) in a one-rank world: every
//! collective runs on the GPU (NCCL reduces over one rank), and the results
//! are checked against what a one-rank reduction must give.
//!
//! Needs a real GPU and libnccl: the CUDA emulator cannot stand in for NCCL
//! (NCCL launches its own kernels and talks to the driver directly), so
//! without a GPU the GPU test says plainly that it skipped, unless
//! `NOISEGRAD_REQUIRE_GPU=1` (the GPU suite); with a GPU but no libnccl it
//! skips too, unless `NOISEGRAD_REQUIRE_NCCL=1` (the suite sets it once it
//! has found a libnccl). The refusals (CPU tensors, the emulator) need no GPU.
#![cfg(feature = "nccl")]

use noisegrad_engine::comm::nccl::Nccl;
use noisegrad_engine::comm::{Communicator, Single, average_gradients, broadcast_tensors};
use noisegrad_engine::{DType, Device, Tensor};
use noisegrad_kernels::cuda;

/// cuda:0 when a real GPU and libnccl are there; else None after saying so.
fn gpu_with_nccl(test: &str) -> Option<Device> {
    let required = match (cuda::is_available(), cuda::nccl::is_available()) {
        (true, true) => return Some(Device::Cuda(0)),
        (false, _) => (
            "NOISEGRAD_REQUIRE_GPU",
            "no GPU on this machine (the CUDA emulator cannot stand in for NCCL)",
        ),
        (true, false) => (
            "NOISEGRAD_REQUIRE_NCCL",
            "libnccl not found (put a folder holding libnccl.so on LD_LIBRARY_PATH)",
        ),
    };
    let (var, why) = required;
    if std::env::var(var).is_ok_and(|v| v == "1") {
        panic!("{test}: {var}=1 but {why}");
    }
    eprintln!("{test}: SKIPPED: {why}");
    None
}

#[test]
fn one_rank_nccl_collectives_run_on_the_gpu() {
    let Some(dev) = gpu_with_nccl("one_rank_nccl_collectives_run_on_the_gpu") else {
        return;
    };
    let comm = Nccl::over(Box::new(Single), dev).unwrap();
    assert_eq!(
        (comm.rank(), comm.world_size(), comm.backend()),
        (0, 1, "nccl")
    );
    let t = |v: &[f32]| Tensor::from_vec(v, &[v.len()], DType::F32, dev).unwrap();

    // One rank: the sum is the value itself, the average (scale 1/W = 1,
    // NCCL's ncclAvg) too, and another scale multiplies afterwards.
    let (a, b) = (t(&[1.0, -2.0, 3.5]), t(&[0.25; 1000]));
    comm.all_reduce_sum(&[a.clone(), b.clone()], 1.0).unwrap();
    assert_eq!(a.to_vec_f32(), vec![1.0, -2.0, 3.5]);
    assert_eq!(b.to_vec_f32(), vec![0.25; 1000]);
    comm.all_reduce_sum(std::slice::from_ref(&a), 0.5).unwrap();
    assert_eq!(a.to_vec_f32(), vec![0.5, -1.0, 1.75]);

    // A strided view is refused by name, not reduced wrongly.
    let m = Tensor::from_vec(&[1.0f32, 2.0, 3.0, 4.0], &[2, 2], DType::F32, dev).unwrap();
    let e = comm
        .all_reduce_sum(&[m.transpose(0, 1).unwrap()], 1.0)
        .unwrap_err();
    assert!(e.to_string().contains("strided"), "{e}");

    broadcast_tensors(&comm, std::slice::from_ref(&a), 0).unwrap();
    assert_eq!(a.to_vec_f32(), vec![0.5, -1.0, 1.75]);

    let mut host = [1.5, -2.0, 1e300];
    comm.all_reduce_sum_host(&mut host).unwrap();
    assert_eq!(host, [1.5, -2.0, 1e300]);
    comm.barrier().unwrap();

    // The DDP path: gradients averaged in place on the device, the seconds
    // spent reported.
    let p = t(&[1.0, 2.0]).set_requires_grad(true);
    p.set_grad(Some(t(&[0.5, -1.0])));
    let secs = average_gradients(&comm, std::slice::from_ref(&p), 4).unwrap();
    assert!(secs >= 0.0);
    assert_eq!(p.grad().unwrap().to_vec_f32(), vec![0.5, -1.0]);
}

#[test]
fn nccl_refuses_cpu_training_by_name() {
    let e = Nccl::over(Box::new(Single), Device::Cpu).err().unwrap();
    assert!(e.to_string().contains("--device cuda"), "{e}");
}

#[test]
fn nccl_refuses_the_cuda_emulator() {
    if cuda::is_available() {
        eprintln!("nccl_refuses_the_cuda_emulator: SKIPPED (a real GPU is present)");
        return;
    }
    if !cuda::use_emulator_if_no_gpu() {
        eprintln!("nccl_refuses_the_cuda_emulator: SKIPPED (no CUDA emulator: needs g++)");
        return;
    }
    let e = Nccl::over(Box::new(Single), Device::Cuda(0)).err().unwrap();
    assert!(e.to_string().contains("emulator cannot run NCCL"), "{e}");
}
