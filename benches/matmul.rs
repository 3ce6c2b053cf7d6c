//! Matrix products: `Tensor::matmul` against a raw `matrixmultiply::sgemm`
//! call on the same data, for square sizes and the GEMM shapes of the DDPM
//! CIFAR-10 U-Net at batch 8 (convolutions lowered by im2col, the time
//! embedding's Linear, and 16×16 self-attention).
//!
//! Throughput is reported as `Elements` = floating-point operations
//! (2·batch·m·k·n), so criterion's "elem/s" reads as FLOP/s.
//! The shapes are mirrored in `scripts/bench_pytorch_cpu.py`; keep them in sync.
//!
//! Run: `cargo bench --bench matmul` (MATMUL_NUM_THREADS sets matrixmultiply's
//! thread count; it defaults to the number of cores).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use noisegrad_engine::Tensor;
use std::cell::OnceCell;
use std::hint::black_box;
use std::time::Duration;

/// Which operand is handed over as a transposed view (no copy is made: the
/// GEMM reads it through its strides).
#[derive(Clone, Copy, PartialEq)]
enum Transposed {
    None,
    A,
    B,
}

/// One product `[batch, m, k] @ [batch, k, n]`.
struct Case {
    name: &'static str,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    transposed: Transposed,
}

const fn case(
    name: &'static str,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    transposed: Transposed,
) -> Case {
    Case {
        name,
        batch,
        m,
        k,
        n,
        transposed,
    }
}

/// The U-Net rows: conv3×3 as im2col GEMM W[C_out, C_in·9] @ cols[C_in·9, B·H·W]
/// at batch B = 8; its weight gradient dY @ colsᵀ and input gradient Wᵀ @ dY;
/// the time-embedding Linear x[8, 512] @ Wᵀ; attention scores Q Kᵀ and
/// the weighted values P V at 16×16×256 (sequence 256, 8 images).
const CASES: &[Case] = &[
    case("square_512", 1, 512, 512, 512, Transposed::None),
    case("square_1024", 1, 1024, 1024, 1024, Transposed::None),
    case("square_1024_At", 1, 1024, 1024, 1024, Transposed::A),
    case(
        "unet_conv_32x32x128",
        1,
        128,
        1152,
        8 * 1024,
        Transposed::None,
    ),
    case(
        "unet_conv_32x32x128_dW",
        1,
        128,
        8 * 1024,
        1152,
        Transposed::B,
    ),
    case(
        "unet_conv_32x32x128_dX",
        1,
        1152,
        128,
        8 * 1024,
        Transposed::A,
    ),
    case(
        "unet_conv_16x16x256",
        1,
        256,
        2304,
        8 * 256,
        Transposed::None,
    ),
    case("unet_conv_8x8x256", 1, 256, 2304, 8 * 64, Transposed::None),
    case("unet_conv_4x4x256", 1, 256, 2304, 8 * 16, Transposed::None),
    case("unet_temb_linear_512", 1, 8, 512, 512, Transposed::B),
    case("unet_attn_qk_16x16x256", 8, 256, 256, 256, Transposed::B),
    case("unet_attn_pv_16x16x256", 8, 256, 256, 256, Transposed::None),
];

/// Deterministic values in [−1, 1) (a cheap LCG; benchmarks need no quality).
fn values(n: usize, seed: u32) -> Vec<f32> {
    noisegrad_kernels::test_data::uniform_f32(n, seed as u64)
}

/// A `rows × cols` matrix per batch, stored as given or, when `transposed`,
/// stored as its transpose and handed over as a view of it. Returns the
/// tensor, its data and the (row, column) strides of the logical matrix.
fn operand(
    batch: usize,
    rows: usize,
    cols: usize,
    transposed: bool,
    seed: u32,
) -> (Tensor, Vec<f32>, [isize; 2]) {
    let data = values(batch * rows * cols, seed);
    let stored = if transposed {
        [batch, cols, rows]
    } else {
        [batch, rows, cols]
    };
    let t = Tensor::from_f32(&data, &stored).expect("bench operand");
    if transposed {
        let view = t.transpose(1, 2).expect("transpose view");
        (view, data, [1, rows as isize])
    } else {
        (t, data, [cols as isize, 1])
    }
}

/// The same product through `matrixmultiply::sgemm` directly, one call per
/// batch entry, into a preallocated output.
fn raw_sgemm(
    c: &Case,
    a: &[f32],
    [rsa, csa]: [isize; 2],
    b: &[f32],
    [rsb, csb]: [isize; 2],
    out: &mut [f32],
) {
    let (m, k, n) = (c.m, c.k, c.n);
    for i in 0..c.batch {
        let (a, b, o) = (
            &a[i * m * k..(i + 1) * m * k],
            &b[i * k * n..(i + 1) * k * n],
            &mut out[i * m * n..(i + 1) * m * n],
        );
        // SAFETY: every index the strides reach lies in these slices (each
        // is one full matrix in row- or column-major order), and `o` is a
        // distinct allocation.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                rsa,
                csa,
                b.as_ptr(),
                rsb,
                csb,
                0.0,
                o.as_mut_ptr(),
                n as isize,
                1,
            );
        }
    }
}

/// One case's operands, as tensors and as raw data with strides.
struct Operands {
    ta: Tensor,
    tb: Tensor,
    a: Vec<f32>,
    sa: [isize; 2],
    b: Vec<f32>,
    sb: [isize; 2],
}

impl Operands {
    /// Builds the operands and checks that both sides compute the same
    /// product (or the comparison would mean nothing).
    fn new(c: &Case) -> Self {
        let (ta, a, sa) = operand(c.batch, c.m, c.k, c.transposed == Transposed::A, 1);
        let (tb, b, sb) = operand(c.batch, c.k, c.n, c.transposed == Transposed::B, 2);
        let ops = Operands {
            ta,
            tb,
            a,
            sa,
            b,
            sb,
        };
        let mut want = vec![0f32; c.batch * c.m * c.n];
        ops.raw(c, &mut want);
        let got = ops.ta.matmul(&ops.tb).expect("matmul").to_vec_f32();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 1e-5 * c.k as f32,
            "{}: results differ by {worst}",
            c.name
        );
        ops
    }

    fn raw(&self, c: &Case, out: &mut [f32]) {
        raw_sgemm(
            c,
            black_box(&self.a),
            self.sa,
            black_box(&self.b),
            self.sb,
            out,
        );
    }
}

fn bench_matmul(cr: &mut Criterion) {
    for c in CASES {
        let flops = 2 * c.batch * c.m * c.k * c.n;
        // Built by the first bench of the case that runs, so a filtered run
        // skips the other cases' setup.
        let ops = OnceCell::new();
        let mut g = cr.benchmark_group(format!("matmul_{}", c.name));
        g.throughput(Throughput::Elements(flops as u64));
        // Big products take tens of ms: fewer samples keep the run short.
        if flops > 1 << 30 {
            g.sample_size(10);
        }
        g.bench_function("noisegrad", |bch| {
            let o = ops.get_or_init(|| Operands::new(c));
            bch.iter(|| black_box(o.ta.matmul(&o.tb).expect("matmul")))
        });
        g.bench_function("raw_sgemm", |bch| {
            let o = ops.get_or_init(|| Operands::new(c));
            let mut out = vec![0f32; c.batch * c.m * c.n];
            bch.iter(|| o.raw(c, &mut out))
        });
        g.finish();
    }
}

/// Short measurements: the whole `cargo bench --bench matmul` takes about a
/// minute. Timings are medians; raise these for publication-grade numbers.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_matmul
}
criterion_main!(benches);
