//! conv2d timings as process CPU time, for comparisons on a shared machine.
//!
//! Wall-clock benchmarks (`cargo bench --bench conv`) are what counts, but
//! on a machine busy with other jobs they mostly measure the scheduler. CPU
//! time of a single-threaded run is far less disturbed, so this example and
//! `scripts/bench_conv_pytorch.py --cpu-time` compare one core against one
//! core:
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release --example conv_cpu_time
//! PYTHONPATH=/opt/pt/site python3 scripts/bench_conv_pytorch.py --cpu-time
//! ```
//!
//! Each number is the minimum over the repetitions; backward is the input,
//! weight and bias gradients together.

use noisegrad_kernels::conv::cpu::{
    Conv2dGeometry, conv2d_backward_bias, conv2d_backward_input, conv2d_backward_weight,
    conv2d_forward,
};
use std::time::Duration;

/// name, N, C, H, W, O, k, stride, pad — the cases of `benches/conv.rs`.
const CASES: &[(&str, [usize; 8])] = &[
    ("3x3s1_32x32x128", [8, 128, 32, 32, 128, 3, 1, 1]),
    ("3x3s1_16x16x256", [8, 256, 16, 16, 256, 3, 1, 1]),
    ("3x3s1_8x8x256", [8, 256, 8, 8, 256, 3, 1, 1]),
    ("3x3s1_4x4x256", [8, 256, 4, 4, 256, 3, 1, 1]),
    ("3x3s2_32x32x128", [8, 128, 32, 32, 128, 3, 2, 1]),
    ("1x1_16x16_128to256", [8, 128, 16, 16, 256, 1, 1, 0]),
];

/// CPU time used by this process so far (all threads).
#[cfg(unix)]
fn cpu_time() -> Duration {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    unsafe extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: a valid clock id and a pointer to a live Timespec.
    unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.sec as u64, ts.nsec as u32)
}

#[cfg(not(unix))]
fn cpu_time() -> Duration {
    // No portable CPU clock: fall back to wall time.
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

fn min_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = cpu_time();
            f();
            (cpu_time() - t).as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    noisegrad_kernels::test_data::uniform_f32(n, seed as u64)
}

fn main() {
    println!(
        "{:<22}{:>10}{:>10}  (ms of CPU time, min of 10)",
        "case", "forward", "backward"
    );
    for &(
        name,
        [
            batch,
            in_channels,
            in_h,
            in_w,
            out_channels,
            k,
            stride,
            padding,
        ],
    ) in CASES
    {
        let g = Conv2dGeometry {
            batch,
            in_channels,
            in_h,
            in_w,
            out_channels,
            kernel_h: k,
            kernel_w: k,
            stride,
            padding,
        };
        let (x, w, b, dy) = (
            values(g.input_len(), 1),
            values(g.weight_len(), 2),
            values(out_channels, 3),
            values(g.output_len(), 4),
        );
        let mut y = vec![0f32; g.output_len()];
        let (mut dx, mut dw, mut db) = (
            vec![0f32; g.input_len()],
            vec![0f32; g.weight_len()],
            vec![0f32; out_channels],
        );
        let fwd = min_ms(10, || conv2d_forward(&g, &x, &w, Some(&b), &mut y));
        let bwd = min_ms(10, || {
            conv2d_backward_input(&g, &dy, &w, &mut dx);
            conv2d_backward_weight(&g, &x, &dy, &mut dw);
            conv2d_backward_bias(&g, &dy, &mut db);
        });
        println!("{name:<22}{fwd:>10.2}{bwd:>10.2}");
    }
}
