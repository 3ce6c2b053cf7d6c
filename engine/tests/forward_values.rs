//! Forward values of every op family against naive f64 reference loops
//! written here from the definitions (gradcheck proves backward consistent
//! with forward; this proves forward right). Sizes include ones above the
//! kernels' parallel threshold (2^15 elements) so the chunked paths run,
//! strided/broadcast operands, and both f32 (SIMD paths) and f64.

mod common;

use common::{assert_close, randn};
use noisegrad_engine::{DType, Device, Result, Tensor};

/// Row-major multi-index of flat position `i` in `shape`.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    idx
}

/// Flat index into a contiguous operand of `shape` for output index `idx`
/// under NumPy broadcasting (trailing axes aligned, size-1 axes repeat).
fn bcast_at(idx: &[usize], shape: &[usize]) -> usize {
    let lead = idx.len() - shape.len();
    shape.iter().enumerate().fold(0, |acc, (d, &n)| {
        acc * n + if n == 1 { 0 } else { idx[lead + d] }
    })
}

fn out_shape(a: &[usize], b: &[usize]) -> Vec<usize> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let get = |s: &[usize]| (i + s.len()).checked_sub(r).map_or(1, |j| s[j]);
            get(a).max(get(b))
        })
        .collect()
}

fn both_dtypes() -> [(DType, f64); 2] {
    [(DType::F64, 1e-12), (DType::F32, 2e-6)]
}

fn cast(t: &Tensor, dtype: DType) -> Tensor {
    t.to_dtype(dtype).unwrap()
}

#[test]
fn broadcasting_binary_ops() -> Result<()> {
    type Op = (
        &'static str,
        fn(&Tensor, &Tensor) -> Result<Tensor>,
        fn(f64, f64) -> f64,
    );
    let ops: [Op; 12] = [
        ("add", |a, b| a.add(b), |x, y| x + y),
        ("sub", |a, b| a.sub(b), |x, y| x - y),
        ("mul", |a, b| a.mul(b), |x, y| x * y),
        ("div", |a, b| a.div(b), |x, y| x / y),
        ("maximum", |a, b| a.maximum(b), f64::max),
        ("minimum", |a, b| a.minimum(b), f64::min),
        ("eq", |a, b| a.eq(b), |x, y| (x == y) as u8 as f64),
        ("ne", |a, b| a.ne(b), |x, y| (x != y) as u8 as f64),
        ("lt", |a, b| a.lt(b), |x, y| (x < y) as u8 as f64),
        ("le", |a, b| a.le(b), |x, y| (x <= y) as u8 as f64),
        ("gt", |a, b| a.gt(b), |x, y| (x > y) as u8 as f64),
        ("ge", |a, b| a.ge(b), |x, y| (x >= y) as u8 as f64),
    ];
    let pairs: [(&[usize], &[usize]); 8] = [
        (&[3, 4], &[3, 4]),
        (&[2, 3, 4], &[3, 1]),
        (&[4], &[2, 1, 4]),
        (&[], &[5]),
        (&[2, 1, 3], &[1, 4, 1]),
        (&[3, 40_000], &[40_000]),
        (&[40_000, 3], &[40_000, 1]),
        (&[2, 20_000, 1], &[1, 1, 3]),
    ];
    for (dtype, tol) in both_dtypes() {
        for (i, (sa, sb)) in pairs.iter().enumerate() {
            let a = cast(&randn(sa, 10 + i as u64), dtype);
            // Round b to a coarse grid and copy some of a's values so the
            // comparisons see equal elements too.
            let b = cast(
                &common::map(&randn(sb, 20 + i as u64), |v| (v * 4.0).round() / 4.0),
                dtype,
            );
            let (av, bv) = (a.to_vec_f64(), b.to_vec_f64());
            let shape = out_shape(sa, sb);
            for (name, op, f) in &ops {
                let got = op(&a, &b)?;
                assert_eq!(got.shape(), shape.as_slice(), "{name} shape");
                assert_eq!(got.dtype(), dtype);
                let want: Vec<f64> = (0..got.numel())
                    .map(|k| {
                        let idx = unravel(k, &shape);
                        let (x, y) = (av[bcast_at(&idx, sa)], bv[bcast_at(&idx, sb)]);
                        // The reference rounds like the kernel's dtype.
                        if dtype == DType::F32 {
                            f(x as f32 as f64, y as f32 as f64) as f32 as f64
                        } else {
                            f(x, y)
                        }
                    })
                    .collect();
                assert_close(
                    &format!("{name} {sa:?} {sb:?} {dtype:?}"),
                    &got.to_vec_f64(),
                    &want,
                    tol,
                );
            }
        }
    }
    // x == x through two views of one buffer.
    let x = randn(&[3, 3], 5);
    let t = x.transpose(0, 1)?;
    let eq = x.eq(&t)?.to_vec_f64();
    for i in 0..3 {
        assert_eq!(eq[i * 3 + i], 1.0);
    }
    Ok(())
}

#[test]
fn strided_operands() -> Result<()> {
    for (dtype, tol) in both_dtypes() {
        // [300, 200] transposed against a narrowed [200, 310]: both strided,
        // 60k elements (parallel path).
        let a = cast(&randn(&[300, 200], 1), dtype);
        let b = cast(&randn(&[200, 310], 2), dtype);
        let (at, bn) = (a.transpose(0, 1)?, b.narrow(1, 5, 300)?);
        let got = at.mul(&bn)?.to_vec_f64();
        let (av, bv) = (at.contiguous()?.to_vec_f64(), bn.contiguous()?.to_vec_f64());
        let want: Vec<f64> = av.iter().zip(&bv).map(|(x, y)| x * y).collect();
        assert_close(&format!("strided mul {dtype:?}"), &got, &want, tol);
        // contiguous() of a transposed view, checked element by element.
        let c = a.transpose(0, 1)?.contiguous()?.to_vec_f64();
        let av = a.to_vec_f64();
        for i in 0..200 {
            for j in 0..300 {
                assert_eq!(c[i * 300 + j], av[j * 200 + i]);
            }
        }
    }
    Ok(())
}

#[test]
fn unary_ops() -> Result<()> {
    type Op = (&'static str, fn(&Tensor) -> Result<Tensor>, fn(f64) -> f64);
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    let _ = sig;
    let ops: [Op; 17] = [
        ("neg", |t| t.neg(), |x| -x),
        ("exp", |t| t.exp(), f64::exp),
        ("log", |t| t.abs()?.log(), |x| x.abs().ln()),
        ("sqrt", |t| t.abs()?.sqrt(), |x| x.abs().sqrt()),
        ("square", |t| t.square(), |x| x * x),
        ("abs", |t| t.abs(), f64::abs),
        ("recip", |t| t.recip(), |x| 1.0 / x),
        ("sigmoid", |t| t.sigmoid(), |x| 1.0 / (1.0 + (-x).exp())),
        ("silu", |t| t.silu(), |x| x / (1.0 + (-x).exp())),
        ("tanh", |t| t.tanh(), f64::tanh),
        ("relu", |t| t.relu(), |x| x.max(0.0)),
        ("affine", |t| t.affine(1.5, -0.5), |x| 1.5 * x - 0.5),
        ("add_scalar", |t| t.add_scalar(2.0), |x| x + 2.0),
        ("div_scalar", |t| t.div_scalar(4.0), |x| x / 4.0),
        ("powf", |t| t.abs()?.powf(1.7), |x| x.abs().powf(1.7)),
        ("powf(2)", |t| t.powf(2.0), |x| x.powf(2.0)),
        ("clamp", |t| t.clamp(-0.5, 0.75), |x| x.clamp(-0.5, 0.75)),
    ];
    for (dtype, tol) in both_dtypes() {
        for (i, shape) in [vec![], vec![7], vec![3, 5], vec![50_000]]
            .iter()
            .enumerate()
        {
            let x = cast(
                &common::map(&randn(shape, 30 + i as u64), |v| 3.0 * v),
                dtype,
            );
            let xv = x.to_vec_f64();
            for (name, op, f) in &ops {
                let got = op(&x)?.to_vec_f64();
                let want: Vec<f64> = xv.iter().map(|&v| f(v)).collect();
                assert_close(&format!("{name} {shape:?} {dtype:?}"), &got, &want, tol);
            }
            // Through a non-contiguous view as well.
            if shape.len() == 2 {
                let t = x.transpose(0, 1)?;
                let tv = t.contiguous()?.to_vec_f64();
                for (name, op, f) in &ops {
                    let want: Vec<f64> = tv.iter().map(|&v| f(v)).collect();
                    assert_close(
                        &format!("{name} transposed {dtype:?}"),
                        &op(&t)?.to_vec_f64(),
                        &want,
                        tol,
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn unary_ops_at_extremes() -> Result<()> {
    // IEEE behaviour at the edges: large |x|, zeros, infinities.
    let xs = [
        -1000.0,
        -104.0,
        -100.0,
        -88.5,
        -87.5,
        -87.0,
        -20.0,
        -0.0,
        0.0,
        20.0,
        87.0,
        88.0,
        88.5,
        88.7,
        88.8,
        89.0,
        100.0,
        1000.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
    ];
    for dtype in [DType::F32, DType::F64] {
        let x = Tensor::from_vec(&xs, &[xs.len()], dtype, Device::Cpu)?;
        let round = |v: f64| {
            if dtype == DType::F32 {
                v as f32 as f64
            } else {
                v
            }
        };
        let stored = x.to_vec_f64(); // the inputs as rounded to `dtype`
        let check = |name: &str, got: Tensor, f: &dyn Fn(f64) -> f64| {
            for (i, (&g, &x)) in got.to_vec_f64().iter().zip(&stored).enumerate() {
                let w = round(f(x));
                let ok = g == w
                    || (g.is_nan() && w.is_nan())
                    || (g - w).abs() <= 2e-6 * w.abs()
                    || (w.abs() < 1e-30 && g.abs() < 1e-30);
                assert!(ok, "{name}({x}) {dtype:?}: got {g}, want {w} (element {i})");
            }
        };
        check("exp", x.exp()?, &f64::exp);
        check("sigmoid", x.sigmoid()?, &|v| 1.0 / (1.0 + (-v).exp()));
        // silu(−∞) = −∞·σ(−∞) = −∞·0 = NaN, as in PyTorch.
        check("silu", x.silu()?, &|v| v / (1.0 + (-v).exp()));
        check("tanh", x.tanh()?, &f64::tanh);
    }
    Ok(())
}

/// Naive reduction of contiguous `v` of `shape` over `axes` (keepdim shape).
fn reduce_ref(
    v: &[f64],
    shape: &[usize],
    axes: &[usize],
    init: f64,
    f: fn(f64, f64) -> f64,
) -> Vec<f64> {
    let kept: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(d, &n)| if axes.contains(&d) { 1 } else { n })
        .collect();
    let mut out = vec![init; kept.iter().product()];
    for (k, &x) in v.iter().enumerate() {
        let idx = unravel(k, shape);
        let o = bcast_at(&idx, &kept);
        out[o] = f(out[o], x);
    }
    out
}

#[test]
fn reductions() -> Result<()> {
    let cases: [(&[usize], &[&[usize]]); 6] = [
        (
            &[3, 5, 7],
            &[&[0], &[1], &[2], &[0, 1], &[0, 2], &[1, 2], &[0, 1, 2], &[]],
        ),
        (&[40, 3000], &[&[0], &[1], &[0, 1]]),
        (&[1, 100_000], &[&[1]]),
        (&[100_000, 3], &[&[0], &[1]]),
        (&[4, 9000, 3], &[&[1], &[0, 2]]),
        (&[], &[&[]]),
    ];
    for (dtype, _) in both_dtypes() {
        for (i, (shape, axis_sets)) in cases.iter().enumerate() {
            let x = cast(&randn(shape, 40 + i as u64), dtype);
            let xv = x.to_vec_f64();
            for axes in *axis_sets {
                let count: usize = axes.iter().map(|&a| shape[a]).product();
                // f32 sums of n terms carry ~n·ε relative error at worst.
                let tol = if dtype == DType::F32 {
                    1e-6 * (count as f64).sqrt().max(1.0) * 4.0
                } else {
                    1e-10
                };
                let sum = reduce_ref(&xv, shape, axes, 0.0, |a, b| a + b);
                let max = reduce_ref(&xv, shape, axes, f64::NEG_INFINITY, f64::max);
                let min = reduce_ref(&xv, shape, axes, f64::INFINITY, f64::min);
                let mean: Vec<f64> = sum.iter().map(|s| s / count as f64).collect();
                let name = format!("{shape:?} over {axes:?} {dtype:?}");
                assert_close(
                    &format!("sum {name}"),
                    &x.sum(axes, true)?.to_vec_f64(),
                    &sum,
                    tol,
                );
                assert_close(
                    &format!("mean {name}"),
                    &x.mean(axes, false)?.to_vec_f64(),
                    &mean,
                    tol,
                );
                assert_close(
                    &format!("max {name}"),
                    &x.max(axes, true)?.to_vec_f64(),
                    &max,
                    0.0,
                );
                assert_close(
                    &format!("min {name}"),
                    &x.min(axes, false)?.to_vec_f64(),
                    &min,
                    0.0,
                );
            }
        }
    }
    // Reducing a permuted view reduces the logical axes.
    let x = randn(&[3, 4, 5], 50);
    let p = x.permute(&[2, 0, 1])?; // [5, 3, 4]
    let want = reduce_ref(
        &p.contiguous()?.to_vec_f64(),
        &[5, 3, 4],
        &[0, 2],
        0.0,
        |a, b| a + b,
    );
    assert_close(
        "sum of permuted",
        &p.sum(&[0, 2], false)?.to_vec_f64(),
        &want,
        1e-12,
    );
    assert_eq!(p.sum(&[0, 2], false)?.shape(), &[3]);
    assert_eq!(p.sum(&[2, 0], true)?.shape(), &[1, 3, 1]);
    // sum_all / mean_all are 0-d.
    let s = x.sum_all()?;
    assert_eq!(s.rank(), 0);
    let total: f64 = x.to_vec_f64().iter().sum();
    assert!((s.item()? - total).abs() < 1e-12);
    assert!((x.mean_all()?.item()? - total / 60.0).abs() < 1e-12);
    // NaN is never hidden by max/min.
    let n = Tensor::from_vec(
        &[1.0, f64::NAN, 3.0, -1.0],
        &[2, 2],
        DType::F32,
        Device::Cpu,
    )?;
    assert!(n.max(&[1], false)?.to_vec_f64()[0].is_nan());
    assert!(n.min(&[0], false)?.to_vec_f64()[1].is_nan());
    assert_eq!(n.max(&[1], false)?.to_vec_f64()[1], 3.0);
    Ok(())
}

#[test]
fn sum_to_undoes_broadcasting() -> Result<()> {
    let x = randn(&[2, 3, 4], 60);
    let xv = x.to_vec_f64();
    for target in [&[3, 1][..], &[4], &[1, 1, 4], &[], &[2, 1, 4]] {
        let got = x.sum_to(target)?;
        assert_eq!(got.shape(), target);
        let full: Vec<usize> = {
            let mut t = vec![1; 3 - target.len()];
            t.extend_from_slice(target);
            t
        };
        let axes: Vec<usize> = (0..3).filter(|&d| full[d] == 1).collect();
        let want = reduce_ref(&xv, &[2, 3, 4], &axes, 0.0, |a, b| a + b);
        assert_close(
            &format!("sum_to {target:?}"),
            &got.to_vec_f64(),
            &want,
            1e-12,
        );
    }
    Ok(())
}

/// Naive batched matmul of contiguous operands with broadcast batch axes.
fn matmul_ref(a: &[f64], sa: &[usize], b: &[f64], sb: &[usize]) -> (Vec<f64>, Vec<usize>) {
    let (m, k, n) = (sa[sa.len() - 2], sa[sa.len() - 1], sb[sb.len() - 1]);
    let batch = out_shape(&sa[..sa.len() - 2], &sb[..sb.len() - 2]);
    let nb: usize = batch.iter().product();
    let mut out = vec![0.0; nb * m * n];
    for bi in 0..nb {
        let idx = unravel(bi, &batch);
        let ao = bcast_at(&idx, &sa[..sa.len() - 2]) * m * k;
        let bo = bcast_at(&idx, &sb[..sb.len() - 2]) * k * n;
        for i in 0..m {
            for j in 0..n {
                out[(bi * m + i) * n + j] =
                    (0..k).map(|p| a[ao + i * k + p] * b[bo + p * n + j]).sum();
            }
        }
    }
    let mut shape = batch;
    shape.extend([m, n]);
    (out, shape)
}

#[test]
fn matmul() -> Result<()> {
    let cases: [(&[usize], &[usize]); 7] = [
        (&[3, 4], &[4, 5]),
        (&[1, 1], &[1, 1]),
        (&[2, 3, 4], &[2, 4, 5]),
        (&[2, 1, 3, 4], &[5, 4, 2]),
        (&[3, 4], &[2, 4, 5]),
        (&[150, 130], &[130, 140]),
        (&[8, 17, 33], &[33, 9]),
    ];
    for (dtype, _) in both_dtypes() {
        for (i, (sa, sb)) in cases.iter().enumerate() {
            let a = cast(&randn(sa, 70 + i as u64), dtype);
            let b = cast(&randn(sb, 80 + i as u64), dtype);
            let (want, shape) = matmul_ref(&a.to_vec_f64(), sa, &b.to_vec_f64(), sb);
            let k = sa[sa.len() - 1] as f64;
            let tol = if dtype == DType::F32 {
                2e-6 * k.sqrt() * 4.0
            } else {
                1e-12
            };
            let got = a.matmul(&b)?;
            assert_eq!(got.shape(), shape.as_slice());
            assert_close(
                &format!("matmul {sa:?}@{sb:?} {dtype:?}"),
                &got.to_vec_f64(),
                &want,
                tol,
            );
            // The same product from transposed storage (read in place).
            let at = a.transpose(sa.len() - 2, sa.len() - 1)?.contiguous()?;
            let at = at.transpose(sa.len() - 2, sa.len() - 1)?;
            assert!(!at.is_contiguous() || sa[sa.len() - 2] == 1 || k == 1.0);
            let bt = b.transpose(sb.len() - 2, sb.len() - 1)?.contiguous()?;
            let bt = bt.transpose(sb.len() - 2, sb.len() - 1)?;
            assert_close(
                &format!("matmul transposed {sa:?}@{sb:?} {dtype:?}"),
                &at.matmul(&bt)?.to_vec_f64(),
                &want,
                tol,
            );
        }
    }
    Ok(())
}

#[test]
fn softmax_and_log_softmax() -> Result<()> {
    for (dtype, tol) in both_dtypes() {
        for (i, shape) in [vec![2, 3, 4], vec![7], vec![40_000, 2], vec![3, 20_000]]
            .iter()
            .enumerate()
        {
            let x = cast(
                &common::map(&randn(shape, 90 + i as u64), |v| 10.0 * v),
                dtype,
            );
            let xv = x.to_vec_f64();
            for axis in 0..shape.len() {
                let mx = reduce_ref(&xv, shape, &[axis], f64::NEG_INFINITY, f64::max);
                let kept: Vec<usize> = shape
                    .iter()
                    .enumerate()
                    .map(|(d, &n)| if d == axis { 1 } else { n })
                    .collect();
                let e: Vec<f64> = xv
                    .iter()
                    .enumerate()
                    .map(|(k, v)| (v - mx[bcast_at(&unravel(k, shape), &kept)]).exp())
                    .collect();
                let s = reduce_ref(&e, shape, &[axis], 0.0, |a, b| a + b);
                let at = |k: usize| bcast_at(&unravel(k, shape), &kept);
                let soft: Vec<f64> = (0..xv.len()).map(|k| e[k] / s[at(k)]).collect();
                let logsoft: Vec<f64> = (0..xv.len())
                    .map(|k| xv[k] - mx[at(k)] - s[at(k)].ln())
                    .collect();
                let name = format!("{shape:?} axis {axis} {dtype:?}");
                assert_close(
                    &format!("softmax {name}"),
                    &x.softmax(axis)?.to_vec_f64(),
                    &soft,
                    tol,
                );
                assert_close(
                    &format!("log_softmax {name}"),
                    &x.log_softmax(axis)?.to_vec_f64(),
                    &logsoft,
                    tol * 10.0,
                );
            }
        }
    }
    // Huge logits and −∞ entries stay finite where they should.
    let x = Tensor::from_vec(
        &[1000.0, 0.0, f64::NEG_INFINITY],
        &[3],
        DType::F32,
        Device::Cpu,
    )?;
    assert_eq!(x.softmax(0)?.to_vec_f64(), [1.0, 0.0, 0.0]);
    let l = x.log_softmax(0)?.to_vec_f64();
    assert_eq!(l[0], 0.0);
    assert_eq!(l[1], -1000.0);
    assert_eq!(l[2], f64::NEG_INFINITY);
    Ok(())
}

#[test]
fn indexing_concat_and_where() -> Result<()> {
    for (dtype, _) in both_dtypes() {
        let x = cast(&randn(&[4, 50_000], 100), dtype);
        let xv = x.to_vec_f64();
        let ids = [3usize, 0, 3, 1];
        let got = x.index_select(0, &ids)?.to_vec_f64();
        for (j, &id) in ids.iter().enumerate() {
            assert_eq!(
                got[j * 50_000..(j + 1) * 50_000],
                xv[id * 50_000..(id + 1) * 50_000]
            );
        }
        let cols = [49_999usize, 7, 7];
        let got = x.index_select(1, &cols)?.to_vec_f64();
        for r in 0..4 {
            for (j, &c) in cols.iter().enumerate() {
                assert_eq!(got[r * 3 + j], xv[r * 50_000 + c]);
            }
        }
        // A transposed source.
        let t = x.narrow(1, 0, 5)?.transpose(0, 1)?; // [5, 4]
        let got = t.index_select(0, &[4, 2])?.to_vec_f64();
        for (j, &row) in [4usize, 2].iter().enumerate() {
            for c in 0..4 {
                assert_eq!(got[j * 4 + c], xv[c * 50_000 + row]);
            }
        }
    }
    let a = randn(&[2, 3], 110);
    let b = randn(&[2, 1], 111);
    let c = Tensor::concat(&[&a, &b, &a], 1)?;
    let (av, bv, cv) = (a.to_vec_f64(), b.to_vec_f64(), c.to_vec_f64());
    for r in 0..2 {
        assert_eq!(cv[r * 7..r * 7 + 3], av[r * 3..r * 3 + 3]);
        assert_eq!(cv[r * 7 + 3], bv[r]);
        assert_eq!(cv[r * 7 + 4..r * 7 + 7], av[r * 3..r * 3 + 3]);
    }
    let cond = Tensor::from_vec(&[1.0, 0.0, 2.0], &[3, 1], DType::F64, Device::Cpu)?;
    let w = Tensor::where_cond(
        &cond,
        &a.transpose(0, 1)?,
        &Tensor::scalar(-9.0, DType::F64, Device::Cpu)?,
    )?;
    assert_eq!(w.shape(), &[3, 2]);
    assert_eq!(w.to_vec_f64(), [av[0], av[3], -9.0, -9.0, av[2], av[5]]);
    let mse = a.mse_loss(&a.add_scalar(0.5)?)?.item()?;
    assert!((mse - 0.25).abs() < 1e-12);
    Ok(())
}

/// Backward kernels on sizes above the parallel threshold: narrow's
/// scatter into zeros, concat's slicing, index_select's scatter-add.
#[test]
fn large_backward_paths() -> Result<()> {
    let x = randn(&[300, 250], 120).set_requires_grad(true);
    x.narrow(1, 20, 200)?.sum_all()?.backward()?;
    let g = x.grad().unwrap().to_vec_f64();
    for r in 0..300 {
        for c in 0..250 {
            let want = if (20..220).contains(&c) { 1.0 } else { 0.0 };
            assert_eq!(g[r * 250 + c], want, "narrow grad at ({r}, {c})");
        }
    }

    let a = randn(&[300, 200], 121).set_requires_grad(true);
    let b = randn(&[150, 300], 122).set_requires_grad(true);
    let c = Tensor::concat(&[&a, &b.transpose(0, 1)?], 1)?; // [300, 350]
    let (av, bv, cv) = (a.to_vec_f64(), b.to_vec_f64(), c.to_vec_f64());
    for r in 0..300 {
        assert_eq!(cv[r * 350..r * 350 + 200], av[r * 200..(r + 1) * 200]);
        for j in 0..150 {
            assert_eq!(cv[r * 350 + 200 + j], bv[j * 300 + r]);
        }
    }
    let w = common::map(&c, |v| 2.0 * v + 1.0);
    c.mul(&w)?.sum_all()?.backward()?;
    let (ga, gb, wv) = (
        a.grad().unwrap().to_vec_f64(),
        b.grad().unwrap().to_vec_f64(),
        w.to_vec_f64(),
    );
    for r in 0..300 {
        assert_eq!(ga[r * 200..(r + 1) * 200], wv[r * 350..r * 350 + 200]);
        for j in 0..150 {
            assert_eq!(gb[j * 300 + r], wv[r * 350 + 200 + j]);
        }
    }

    let x = randn(&[5, 40_000], 123).set_requires_grad(true);
    x.index_select(0, &[1, 1, 3])?.sum_all()?.backward()?;
    let g = x.grad().unwrap().to_vec_f64();
    for (row, want) in [0.0, 2.0, 0.0, 1.0, 0.0].iter().enumerate() {
        assert!(
            g[row * 40_000..(row + 1) * 40_000]
                .iter()
                .all(|v| v == want)
        );
    }
    let x = randn(&[40_000, 3], 124).set_requires_grad(true);
    x.index_select(1, &[2, 0, 2])?.sum_all()?.backward()?;
    let g = x.grad().unwrap().to_vec_f64();
    assert!(g.chunks(3).all(|r| r == [1.0, 0.0, 2.0]));
    Ok(())
}

/// NaN is never hidden by elementwise max/min, relu or clamp (as in
/// PyTorch); a diverged activation must stay visible.
#[test]
fn nan_propagates_through_max_min_relu_and_clamp() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        let n = Tensor::from_vec(&[f64::NAN, 2.0, -3.0], &[3], dtype, Device::Cpu)?;
        let o = Tensor::from_vec(&[1.0, f64::NAN, -4.0], &[3], dtype, Device::Cpu)?;
        let nan_nan_then = |t: Tensor, last: f64| {
            let v = t.to_vec_f64();
            assert!(v[0].is_nan() && v[1].is_nan(), "{v:?}");
            assert_eq!(v[2], last);
        };
        nan_nan_then(n.maximum(&o)?, -3.0);
        nan_nan_then(n.minimum(&o)?, -4.0);
        nan_nan_then(o.maximum(&n)?, -3.0);
        let relu = n.relu()?.to_vec_f64();
        assert!(relu[0].is_nan() && relu[1] == 2.0 && relu[2] == 0.0);
        let clamped = n.clamp(-1.0, 1.0)?.to_vec_f64();
        assert!(clamped[0].is_nan() && clamped[1] == 1.0 && clamped[2] == -1.0);
        // And with a long run, through the vectorised loop.
        let mut v = vec![0.5; 1001];
        v[1000] = f64::NAN;
        v[3] = f64::NAN;
        let t = Tensor::from_vec(&v, &[1001], dtype, Device::Cpu)?;
        let r = t.relu()?.to_vec_f64();
        assert!(r[3].is_nan() && r[1000].is_nan() && r[999] == 0.5);
        let m = t
            .maximum(&Tensor::scalar(0.0, dtype, Device::Cpu)?)?
            .to_vec_f64();
        assert!(m[3].is_nan() && m[1000].is_nan());
    }
    Ok(())
}
