//! The emulator on small kernels written for the purpose: barriers, warp
//! shuffles, deadlock reports, launch checks; then the emulated device
//! through the real launchers (memory checks, row-major GEMM). They need
//! g++ and say so when it is missing.

use super::*;
use crate::cuda::use_emulator_if_no_gpu;
use crate::cuda::{CudaDevice, sources::COMMON};
use crate::elementwise::cuda as elementwise;
use crate::gemm::cuda::{MatOperand, MatOut, gemm};

fn have_gxx(test: &str) -> bool {
    let ok = compiler_available();
    if !ok {
        eprintln!("{test}: SKIPPED (g++ not found)");
    }
    ok
}

const BODY: &str = r#"
// Each thread publishes its index, then reads its neighbour's: wrong
// without the barrier, since the neighbour has not run yet.
extern "C" __global__ void rotate(float* y) {
    __shared__ float s[1024];
    unsigned t = threadIdx.x;
    s[t] = (float)t;
    __syncthreads();
    y[blockIdx.x * blockDim.x + t] = s[(t + 1) % blockDim.x] + 1000.0f * blockIdx.x;
}

// warp_sum / block_sum / block_max from common.cuh.
extern "C" __global__ void sums(const float* x, float* warp, float* block, float* mx) {
    __shared__ float scratch[32];
    float v = x[blockIdx.x * blockDim.x + threadIdx.x];
    float w = warp_sum(v);
    float b = block_sum(v, scratch);
    float m = block_max(v, scratch);
    if (threadIdx.x % 32 == 0) warp[(blockIdx.x * blockDim.x + threadIdx.x) / 32] = w;
    if (threadIdx.x == 0) { block[blockIdx.x] = b; mx[blockIdx.x] = m; }
}

// Every shuffle flavour and a ballot, one result per lane and op.
extern "C" __global__ void shuffles(float* out) {
    unsigned l = threadIdx.x;
    float v = (float)l;
    out[0 * 32 + l] = __shfl_sync(0xffffffffu, v, 5);
    out[1 * 32 + l] = __shfl_xor_sync(0xffffffffu, v, 3);
    out[2 * 32 + l] = __shfl_down_sync(0xffffffffu, v, 4);
    out[3 * 32 + l] = __shfl_up_sync(0xffffffffu, v, 4);
    out[4 * 32 + l] = __shfl_xor_sync(0xffffffffu, v, 8, 8);
    out[5 * 32 + l] = (float)__ballot_sync(0xffffffffu, l % 3 == 0);
    out[6 * 32 + l] = __shfl_sync(0xffffffffu, (double)l * 0.5, 31 - l);
}

extern "C" __global__ void coords(float* out) {
    unsigned t = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    unsigned b = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    unsigned i = b * blockDim.x * blockDim.y * blockDim.z + t;
    out[4 * i + 0] = threadIdx.x + 10 * threadIdx.y + 100 * threadIdx.z;
    out[4 * i + 1] = blockIdx.x + 10 * blockIdx.y + 100 * blockIdx.z;
    out[4 * i + 2] = blockDim.x + 10 * blockDim.y + 100 * blockDim.z;
    out[4 * i + 3] = gridDim.x + 10 * gridDim.y + 100 * gridDim.z;
}

// Reversal through dynamic shared memory.
extern "C" __global__ void reverse_dyn(const float* x, float* y) {
    extern __shared__ float buf[];
    buf[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    y[threadIdx.x] = buf[blockDim.x - 1 - threadIdx.x];
}

// Undefined on a GPU: threads that returned never reach the barrier.
extern "C" __global__ void early_return(float* y, int n) {
    if ((int)threadIdx.x >= n) return;
    __syncthreads();
    y[threadIdx.x] = 1.0f;
}

// Half a warp shuffles with a full mask.
extern "C" __global__ void divergent_shuffle(float* y) {
    if (threadIdx.x < 16) y[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

// Only block 0 writes the shared array: block 1 reads what it never wrote.
extern "C" __global__ void stale_shared(float* y) {
    __shared__ float s[64];
    if (blockIdx.x == 0) s[threadIdx.x] = 1.0f;
    __syncthreads();
    y[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
}

// Grid-stride fill with atomics: the total must be exact.
extern "C" __global__ void count(float* total, long long n) {
    GRID_STRIDE(i, n) atomicAdd(total, 1.0f);
}
"#;

/// The test module, compiled once per process.
fn module() -> &'static Module {
    static M: std::sync::OnceLock<Module> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let src = format!("{COMMON}\n{BODY}");
        Module::load("emu_selftest", &src).unwrap_or_else(|e| panic!("{e}"))
    })
}

fn cfg(grid: (u32, u32, u32), block: (u32, u32, u32), smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: block,
        shared_mem_bytes: smem,
    }
}

fn ptr<T>(v: &mut [T]) -> Arg {
    Arg::Ptr(v.as_mut_ptr() as u64)
}

#[test]
fn barriers_order_the_threads_of_a_block() {
    if !have_gxx("barriers_order_the_threads_of_a_block") {
        return;
    }
    let m = module();
    for threads in [32u32, 256, 1024, 7] {
        let mut y = vec![0f32; 3 * threads as usize];
        m.launch("rotate", cfg((3, 1, 1), (threads, 1, 1), 0), &[ptr(&mut y)])
            .unwrap();
        for b in 0..3 {
            for t in 0..threads {
                let want = ((t + 1) % threads) as f32 + 1000.0 * b as f32;
                assert_eq!(y[(b * threads + t) as usize], want, "block {b} thread {t}");
            }
        }
    }
}

#[test]
fn warp_and_block_reductions() {
    if !have_gxx("warp_and_block_reductions") {
        return;
    }
    let m = module();
    let (blocks, threads) = (3usize, 256usize);
    let x: Vec<f32> = (0..blocks * threads)
        .map(|i| ((i * 37) % 101) as f32)
        .collect();
    let mut xs = x.clone();
    let mut warp = vec![0f32; blocks * threads / 32];
    let (mut block, mut mx) = (vec![0f32; blocks], vec![0f32; blocks]);
    m.launch(
        "sums",
        cfg((blocks as u32, 1, 1), (threads as u32, 1, 1), 0),
        &[ptr(&mut xs), ptr(&mut warp), ptr(&mut block), ptr(&mut mx)],
    )
    .unwrap();
    for (w, got) in warp.iter().enumerate() {
        let want: f32 = x[w * 32..(w + 1) * 32].iter().sum();
        assert_eq!(*got, want, "warp {w}");
    }
    for b in 0..blocks {
        let row = &x[b * threads..(b + 1) * threads];
        assert_eq!(block[b], row.iter().sum::<f32>(), "block {b}");
        assert_eq!(mx[b], row.iter().cloned().fold(f32::MIN, f32::max));
    }
}

#[test]
fn shuffles_read_the_lanes_cuda_defines() {
    if !have_gxx("shuffles_read_the_lanes_cuda_defines") {
        return;
    }
    let m = module();
    let mut out = vec![0f32; 7 * 32];
    m.launch("shuffles", cfg((1, 1, 1), (32, 1, 1), 0), &[ptr(&mut out)])
        .unwrap();
    let row = |i: usize| &out[i * 32..(i + 1) * 32];
    let ballot = (0..32).filter(|l| l % 3 == 0).fold(0u32, |b, l| b | 1 << l);
    for l in 0..32usize {
        assert_eq!(row(0)[l], 5.0);
        assert_eq!(row(1)[l], (l ^ 3) as f32);
        assert_eq!(row(2)[l], if l + 4 < 32 { l + 4 } else { l } as f32);
        assert_eq!(row(3)[l], if l >= 4 { l - 4 } else { l } as f32);
        // Width 8: a later segment gives the caller's own value, an earlier
        // one is read (CUDA's rule).
        let xor8 = if l & 8 != 0 { l - 8 } else { l };
        assert_eq!(row(4)[l], xor8 as f32, "lane {l}");
        assert_eq!(row(5)[l], ballot as f32);
        assert_eq!(
            row(6)[l],
            (31 - l) as f32 * 0.5,
            "a double through a shuffle"
        );
    }
}

#[test]
fn thread_and_block_coordinates_in_three_dimensions() {
    if !have_gxx("thread_and_block_coordinates_in_three_dimensions") {
        return;
    }
    let m = module();
    let (grid, block) = ((2u32, 3u32, 2u32), (4u32, 2u32, 3u32));
    let n = (2 * 3 * 2) * (4 * 2 * 3);
    let mut out = vec![0f32; 4 * n];
    m.launch("coords", cfg(grid, block, 0), &[ptr(&mut out)])
        .unwrap();
    let mut i = 0;
    for (bz, by, bx) in itertools(grid) {
        for (tz, ty, tx) in itertools(block) {
            let got = &out[4 * i..4 * i + 4];
            let want = [
                tx + 10 * ty + 100 * tz,
                bx + 10 * by + 100 * bz,
                4 + 20 + 300,
                2 + 30 + 200,
            ]
            .map(|v| v as f32);
            assert_eq!(got, want, "item {i}");
            i += 1;
        }
    }
}

/// (z, y, x) in launch order for a (x, y, z) extent.
fn itertools((x, y, z): (u32, u32, u32)) -> Vec<(u32, u32, u32)> {
    let mut v = Vec::new();
    for k in 0..z {
        for j in 0..y {
            for i in 0..x {
                v.push((k, j, i));
            }
        }
    }
    v
}

#[test]
fn dynamic_shared_memory_and_atomics() {
    if !have_gxx("dynamic_shared_memory_and_atomics") {
        return;
    }
    let m = module();
    let mut x: Vec<f32> = (0..100).map(|i| i as f32).collect();
    let mut y = vec![0f32; 100];
    m.launch(
        "reverse_dyn",
        cfg((1, 1, 1), (100, 1, 1), 400),
        &[ptr(&mut x), ptr(&mut y)],
    )
    .unwrap();
    assert_eq!(y, (0..100).rev().map(|i| i as f32).collect::<Vec<_>>());
    let mut total = vec![0f32];
    m.launch(
        "count",
        cfg((5, 1, 1), (64, 1, 1), 0),
        &[ptr(&mut total), Arg::I64(12_345)],
    )
    .unwrap();
    assert_eq!(total[0], 12_345.0);
}

#[test]
fn each_block_finds_its_shared_memory_full_of_nan() {
    if !have_gxx("each_block_finds_its_shared_memory_full_of_nan") {
        return;
    }
    let mut y = vec![0f32; 128];
    module()
        .launch(
            "stale_shared",
            cfg((2, 1, 1), (64, 1, 1), 0),
            &[ptr(&mut y)],
        )
        .unwrap();
    assert!(y[..64].iter().all(|&v| v == 1.0));
    assert!(
        y[64..].iter().all(|v| v.is_nan()),
        "block 1 saw block 0's values"
    );
}

#[test]
fn a_barrier_that_cannot_complete_is_reported_not_hung() {
    if !have_gxx("a_barrier_that_cannot_complete_is_reported_not_hung") {
        return;
    }
    let m = module();
    let mut y = vec![0f32; 128];
    let err = m
        .launch(
            "early_return",
            cfg((2, 1, 1), (128, 1, 1), 0),
            &[ptr(&mut y), Arg::I32(100)],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("kernel `early_return` deadlocks"), "{err}");
    assert!(
        err.contains("100 thread(s) wait at __syncthreads()"),
        "{err}"
    );
    assert!(err.contains("28 have exited"), "{err}");
    // The fibers are reset: the module keeps working.
    m.launch(
        "early_return",
        cfg((1, 1, 1), (128, 1, 1), 0),
        &[ptr(&mut y), Arg::I32(128)],
    )
    .unwrap();
    assert!(y.iter().all(|&v| v == 1.0));

    let err = m
        .launch(
            "divergent_shuffle",
            cfg((1, 1, 1), (32, 1, 1), 0),
            &[ptr(&mut y)],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("16 at a warp-synchronous op"), "{err}");
}

#[test]
fn warp_ops_on_lanes_that_do_not_exist_are_errors() {
    if !have_gxx("warp_ops_on_lanes_that_do_not_exist_are_errors") {
        return;
    }
    let m = module();
    let (mut x, mut w, mut b, mut mx) = (vec![1f32; 48], vec![0f32; 2], vec![0f32], vec![0f32]);
    let err = m
        .launch(
            "sums",
            cfg((1, 1, 1), (48, 1, 1), 0),
            &[ptr(&mut x), ptr(&mut w), ptr(&mut b), ptr(&mut mx)],
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("names lanes that do not exist in warp 1"),
        "{err}"
    );
}

#[test]
fn launches_are_checked_like_the_driver_checks_them() {
    if !have_gxx("launches_are_checked_like_the_driver_checks_them") {
        return;
    }
    let m = module();
    let mut y = vec![0f32; 4];
    let err = m
        .launch("nope", cfg((1, 1, 1), (1, 1, 1), 0), &[ptr(&mut y)])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("emu_selftest::nope") && err.contains("no such kernel"),
        "{err}"
    );
    let err = m
        .launch("early_return", cfg((1, 1, 1), (4, 1, 1), 0), &[ptr(&mut y)])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("[Word64, Int32]") && err.contains("[Word64]"),
        "{err}"
    );
    let err = m
        .launch("rotate", cfg((1, 1, 1), (2048, 1, 1), 0), &[ptr(&mut y)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid launch"), "{err}");
    let err = m
        .launch(
            "rotate",
            cfg((1, 1, 1), (4, 1, 1), 64 * 1024),
            &[ptr(&mut y)],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("dynamic shared memory"), "{err}");
}

#[test]
fn host_threads_launch_side_by_side() {
    if !have_gxx("host_threads_launch_side_by_side") {
        return;
    }
    let m = module();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..20 {
                    let mut y = vec![0f32; 256];
                    m.launch("rotate", cfg((1, 1, 1), (256, 1, 1), 0), &[ptr(&mut y)])
                        .unwrap();
                    assert!((0..256).all(|t| y[t] == ((t + 1) % 256) as f32));
                }
            });
        }
    });
}

#[test]
fn a_compile_error_names_the_module_and_shows_gxx_output() {
    if !have_gxx("a_compile_error_names_the_module_and_shows_gxx_output") {
        return;
    }
    let err = Module::load(
        "emu_broken",
        "extern \"C\" __global__ void k(float* y) { y[0] = undefined_thing; }",
    )
    .err()
    .expect("must not compile")
    .to_string();
    assert!(err.contains("`emu_broken`"), "{err}");
    assert!(err.contains("undefined_thing"), "{err}");
    assert!(
        err.contains("emu_broken.cu:1"),
        "line numbers are the module's: {err}"
    );
}

/// The emulated device behind the real launchers (this binary's `cuda:0`;
/// no other test here opens a device).
fn emulated_device(test: &str) -> Option<Arc<CudaDevice>> {
    if !have_gxx(test) || !use_emulator_if_no_gpu() {
        return None;
    }
    let dev = CudaDevice::get(0).unwrap();
    dev.is_emulated().then_some(dev)
}

#[test]
fn emulated_device_memory_is_checked() {
    let Some(dev) = emulated_device("emulated_device_memory_is_checked") else {
        return;
    };
    assert_eq!(dev.name(), "CUDA emulator (CPU)");
    let a = dev.upload(&[1.0, 2.0, 3.0]).unwrap();
    // Fresh buffers hold NaN, not zeros.
    let b = dev.alloc(5).unwrap();
    assert!(dev.download(&b, 0, 5).unwrap().iter().all(|v| v.is_nan()));
    elementwise::copy_d2d(&dev, a.ptr(), b.ptr_at(2), 3).unwrap();
    assert_eq!(dev.download(&b, 2, 3).unwrap(), [1.0, 2.0, 3.0]);
    let err = elementwise::copy_d2d(&dev, a.ptr(), b.ptr_at(3), 3)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("run past the end of the 20-byte buffer"),
        "{err}"
    );
    let stale = a.ptr();
    drop(a);
    let err = elementwise::copy_d2d(&dev, stale, b.ptr(), 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not in any live buffer"), "{err}");
    let err = dev
        .launch(
            "elementwise",
            "fill",
            crate::cuda::grid_1d(&dev, 1),
            &[Arg::Ptr(stale), Arg::F32(0.0), Arg::I64(1)],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("elementwise::fill`, argument 0"), "{err}");
    // A kernel that writes past its buffer (here: told a larger n).
    let small = dev.alloc(10).unwrap();
    let err = dev
        .launch(
            "elementwise",
            "fill",
            crate::cuda::grid_1d(&dev, 13),
            &[Arg::Ptr(small.ptr()), Arg::F32(1.0), Arg::I64(13)],
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("elementwise::fill`, argument 0")
            && err.contains("wrote past the end of the 40-byte buffer")
            && err.contains("up to 12 bytes past it"),
        "{err}"
    );
    let z = dev.zeros(7).unwrap();
    assert_eq!(dev.download(&z, 0, 7).unwrap(), [0.0; 7]);
    let f = elementwise::fill(&dev, 1000, 2.5).unwrap();
    assert!(dev.download(&f, 0, 1000).unwrap().iter().all(|&v| v == 2.5));
}

/// Row-major `gemm` (with the operand swap into cuBLAS's column-major
/// call) against the definition, for every transpose combination.
#[test]
fn emulated_row_major_gemm_matches_the_definition() {
    let Some(dev) = emulated_device("emulated_row_major_gemm_matches_the_definition") else {
        return;
    };
    let (m, n, k, batch) = (5usize, 7usize, 4usize, 3usize);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        // Stored shapes (row-major) with a padded row stride.
        let (ar, ac) = if ta { (k, m) } else { (m, k) };
        let (br, bc) = if tb { (n, k) } else { (k, n) };
        let (lda, ldb) = (ac + 2, bc + 1);
        let a: Vec<f32> = (0..batch * ar * lda)
            .map(|i| (i % 13) as f32 - 6.0)
            .collect();
        let b: Vec<f32> = (0..batch * br * ldb)
            .map(|i| (i % 7) as f32 - 3.0)
            .collect();
        let at = |p: usize, i: usize, l: usize| {
            let (r, c) = if ta { (l, i) } else { (i, l) };
            a[p * ar * lda + r * lda + c]
        };
        let bt = |p: usize, l: usize, j: usize| {
            let (r, c) = if tb { (j, l) } else { (l, j) };
            b[p * br * ldb + r * ldb + c]
        };
        let (da, db) = (dev.upload(&a).unwrap(), dev.upload(&b).unwrap());
        let dc = dev.zeros(batch * m * n).unwrap();
        gemm(
            &dev,
            (m, n, k),
            MatOperand {
                ptr: da.ptr(),
                ld: lda,
                trans: ta,
                batch_stride: ar * lda,
            },
            MatOperand {
                ptr: db.ptr(),
                ld: ldb,
                trans: tb,
                batch_stride: br * ldb,
            },
            MatOut {
                ptr: dc.ptr(),
                ld: n,
                batch_stride: m * n,
            },
            batch,
            (1.0, 0.0),
        )
        .unwrap();
        let c = dev.download(&dc, 0, batch * m * n).unwrap();
        for p in 0..batch {
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = (0..k).map(|l| at(p, i, l) * bt(p, l, j)).sum();
                    assert_eq!(
                        c[p * m * n + i * n + j],
                        want,
                        "ta={ta} tb={tb} ({p},{i},{j})"
                    );
                }
            }
        }
    }
}
