//! Memory-bound ops: elementwise, broadcast, reductions and softmax, at the
//! U-Net's activation size (8·128·32·32 = 1 M elements, 4 MiB: fits in L3)
//! and 16× that (64 MiB per tensor: streams from DRAM).
//!
//! Throughput is `Bytes` = bytes read + bytes written by one call, so
//! criterion's "B/s" compares directly with the copy baselines, which show
//! what this machine's memory system does:
//! - `memcpy_1thread`: `copy_from_slice` into a preallocated buffer;
//! - `copy_2threads`: the kernels' parallel strided copy into a preallocated
//!   buffer (the ceiling for a rayon kernel writing into existing memory);
//! - `alloc_copy`: `to_vec()`, i.e. allocate then copy, which is what every
//!   tensor op pays since each returns a fresh tensor.
//!
//! The shapes are mirrored in `scripts/bench_pytorch_cpu.py`; keep them in sync.
//! Run: `cargo bench --bench elementwise`.

use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use noisegrad_engine::{DType, Device, Philox, Tensor};
use noisegrad_kernels::copy::cpu::copy_strided;
use noisegrad_kernels::elementwise::cpu::{self as elementwise, BinaryOp, Strided};
use noisegrad_kernels::reduce::cpu::{ReduceOp, reduce};
use std::cell::OnceCell;
use std::hint::black_box;
use std::time::Duration;

const F32: u64 = 4;

/// An activation shape `[batch, channels, h, w]` and the label it is reported under.
struct Size {
    label: &'static str,
    nchw: [usize; 4],
}

const SIZES: &[Size] = &[
    Size {
        label: "1M",
        nchw: [8, 128, 32, 32],
    },
    Size {
        label: "16M",
        nchw: [128, 128, 32, 32],
    },
];

/// The inputs of one size, built on first use so that a filtered run
/// (`cargo bench --bench elementwise -- add`) skips the others' setup.
struct Inputs {
    shape: [usize; 4],
    x: Tensor,
    y: Tensor,
    bias: Tensor,
    /// `[n / 256, 256]`: the rows of the softmax.
    rows: Tensor,
    xv: Vec<f32>,
    yv: Vec<f32>,
}

impl Inputs {
    fn new(shape: [usize; 4]) -> Self {
        let n: usize = shape.iter().product();
        let randn = |shape: &[usize], seed| {
            Tensor::randn(shape, DType::F32, Device::Cpu, &mut Philox::new(seed)).expect("randn")
        };
        let (x, y) = (randn(&shape, 1), randn(&shape, 2));
        Inputs {
            shape,
            bias: randn(&[1, shape[1], 1, 1], 3),
            rows: randn(&[n / 256, 256], 4),
            xv: x.to_vec_f32(),
            yv: y.to_vec_f32(),
            x,
            y,
        }
    }
}

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

type Group<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// Registers `name`, which moves `passes` × numel × 4 bytes per call.
fn bench<F: FnMut(&Inputs)>(g: &mut Group, name: &str, passes: usize, data: &Lazy, mut f: F) {
    g.throughput(Throughput::Bytes(passes as u64 * data.numel as u64 * F32));
    g.bench_function(name, |b| {
        let d = data.get();
        b.iter(|| f(d))
    });
}

/// Inputs built on the first benchmark that runs.
struct Lazy {
    shape: [usize; 4],
    numel: usize,
    cell: OnceCell<Inputs>,
}

impl Lazy {
    fn get(&self) -> &Inputs {
        self.cell.get_or_init(|| Inputs::new(self.shape))
    }
}

fn copy_baselines(g: &mut Group, data: &Lazy) {
    let mut dst = vec![0f32; data.numel];
    bench(g, "memcpy_1thread", 2, data, |d| {
        dst.copy_from_slice(black_box(&d.xv))
    });
    let n = data.numel;
    bench(g, "copy_2threads", 2, data, |d| {
        copy_strided(&[n], black_box(&d.xv), 0, &[1], &mut dst, 0, &[1])
    });
    bench(g, "alloc_copy", 2, data, |d| {
        black_box(black_box(&d.xv).to_vec());
    });
    // NCHW → NHWC, as attention reads [batch, h·w, channels]: a strided
    // (transposing) copy into a fresh tensor.
    bench(g, "permute_nchw_to_nhwc", 2, data, |d| {
        let view = d.x.permute(&[0, 2, 3, 1]).expect("permute");
        black_box(view.contiguous().expect("contiguous"));
    });
}

fn binary_ops(g: &mut Group, data: &Lazy) {
    bench(g, "add", 3, data, |d| {
        black_box(d.x.add(&d.y).expect("add"));
    });
    bench(g, "mul", 3, data, |d| {
        black_box(d.x.mul(&d.y).expect("mul"));
    });
    // The convolution bias: every (h, w) of channel c gets bias[c].
    bench(g, "add_bias_nchw", 2, data, |d| {
        black_box(d.x.add(&d.bias).expect("bias add"));
    });
    // The kernel alone into a preallocated output: the gap to `add` is the
    // cost of allocating the result.
    let strides = contiguous_strides(&data.shape);
    let mut out = vec![0f32; data.numel];
    bench(g, "add_kernel_prealloc", 3, data, |d| {
        let sa = Strided {
            data: &d.xv,
            offset: 0,
            strides: &strides,
        };
        let sb = Strided {
            data: &d.yv,
            offset: 0,
            strides: &strides,
        };
        elementwise::binary(BinaryOp::Add, &d.shape, sa, sb, &mut out);
    });
}

fn unary_ops(g: &mut Group, data: &Lazy) {
    bench(g, "silu", 2, data, |d| {
        black_box(d.x.silu().expect("silu"));
    });
    bench(g, "exp", 2, data, |d| {
        black_box(d.x.exp().expect("exp"));
    });
}

fn reductions(g: &mut Group, data: &Lazy) {
    // The bias gradient: Σ over batch and space, per channel.
    bench(g, "sum_axes_0_2_3", 1, data, |d| {
        black_box(d.x.sum(&[0, 2, 3], false).expect("sum"));
    });
    // Per-(image, channel) sums, as in normalisation statistics.
    bench(g, "sum_axes_2_3", 1, data, |d| {
        black_box(d.x.sum(&[2, 3], false).expect("sum"));
    });
    // The same reduction by the kernel alone, into a preallocated output.
    let [n, c, h, w] = data.shape;
    let mut out = vec![0f32; n * c];
    bench(g, "sum_axes_2_3_kernel", 1, data, |d| {
        reduce(ReduceOp::Sum, black_box(&d.xv), n * c, h * w, 1, &mut out)
    });
}

/// Softmax over rows of 256 (the attention scores at 16×16 resolution).
fn softmax(g: &mut Group, data: &Lazy) {
    bench(g, "softmax_rows_256", 2, data, |d| {
        black_box(d.rows.softmax(1).expect("softmax"));
    });
}

fn bench_elementwise(c: &mut Criterion) {
    for s in SIZES {
        let data = Lazy {
            shape: s.nchw,
            numel: s.nchw.iter().product(),
            cell: OnceCell::new(),
        };
        let mut g = c.benchmark_group(format!("elementwise_{}", s.label));
        copy_baselines(&mut g, &data);
        binary_ops(&mut g, &data);
        unary_ops(&mut g, &data);
        reductions(&mut g, &data);
        softmax(&mut g, &data);
        g.finish();
    }
}

/// Short measurements keep `cargo bench --bench elementwise` near a minute.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_elementwise
}
criterion_main!(benches);
