//! Finite-difference gradient checks (f64) for every differentiable op.
//!
//! Each case runs `engine::gradcheck`, which compares the tape's gradient of
//! L = Σ f(x) ⊙ w (w random) with central differences. Cases cover several
//! seeded shapes, NumPy broadcasting (including 0-d operands), non-contiguous
//! inputs (permuted and narrowed views built inside `f`) and inputs used
//! more than once. Inputs are kept away from kinks (0 for abs/relu, ties
//! for max/min/maximum, the bounds of clamp) by more than the step.

mod common;

use common::{away_from_zero, check, check_with, map, positive, randn, random_shape};
use noisegrad_engine::gradcheck::GradcheckOptions;
use noisegrad_engine::{DType, Device, Philox, Result, Tensor};

/// Shapes every unary op is checked on: 0-d, vector, matrix, rank 3, and
/// two seeded random shapes.
fn unary_shapes() -> Vec<Vec<usize>> {
    vec![
        vec![],
        vec![5],
        vec![3, 4],
        vec![2, 3, 4],
        random_shape(3, 4, 11),
        random_shape(4, 3, 12),
    ]
}

/// Checks a unary op on every shape, contiguous and through a transposed
/// view, with inputs drawn by `input`.
fn check_unary(
    name: &str,
    input: impl Fn(&[usize], u64) -> Tensor,
    op: impl Fn(&Tensor) -> Result<Tensor>,
) {
    for (i, shape) in unary_shapes().iter().enumerate() {
        let x = input(shape, 100 + i as u64);
        check(&format!("{name} {shape:?}"), &[x], |v| op(&v[0]));
    }
    // Non-contiguous: a transposed view of a [4, 3] leaf, and a narrowed one.
    let x = input(&[4, 3], 7);
    check(
        &format!("{name} transposed"),
        std::slice::from_ref(&x),
        |v| op(&v[0].transpose(0, 1)?),
    );
    check(&format!("{name} narrowed"), &[x], |v| {
        op(&v[0].narrow(0, 1, 2)?)
    });
}

fn any(shape: &[usize], seed: u64) -> Tensor {
    randn(shape, seed)
}

fn nonzero(shape: &[usize], seed: u64) -> Tensor {
    away_from_zero(shape, seed, 0.2)
}

// ---- unary ----------------------------------------------------------------

#[test]
fn neg() {
    check_unary("neg", any, |x| x.neg());
}

#[test]
fn exp() {
    check_unary("exp", any, |x| x.exp());
}

#[test]
fn log() {
    check_unary("log", positive, |x| x.log());
}

#[test]
fn sqrt() {
    check_unary("sqrt", positive, |x| x.sqrt());
}

#[test]
fn square() {
    check_unary("square", any, |x| x.square());
}

#[test]
fn powf() {
    for e in [2.0, 3.0, 0.5, -1.5, 1.0] {
        check_unary(&format!("powf({e})"), positive, move |x| x.powf(e));
    }
    // Integer exponents are defined for negative bases too.
    check_unary("powf(3) negative base", nonzero, |x| x.powf(3.0));
    // x⁰ = 1 is constant: zero gradient, even at x = 0 (not 0·0⁻¹ = NaN).
    check_unary("powf(0)", any, |x| x.powf(0.0));
    check(
        "powf(0) at 0",
        &[Tensor::zeros(&[3], DType::F64, Device::Cpu).unwrap()],
        |v| v[0].powf(0.0),
    );
}

#[test]
fn abs() {
    check_unary("abs", nonzero, |x| x.abs());
}

#[test]
fn recip() {
    check_unary("recip", nonzero, |x| x.recip());
}

#[test]
fn sigmoid() {
    check_unary("sigmoid", any, |x| x.sigmoid());
}

#[test]
fn silu() {
    check_unary("silu", any, |x| x.silu());
}

#[test]
fn tanh() {
    check_unary("tanh", any, |x| x.tanh());
}

#[test]
fn relu() {
    check_unary("relu", nonzero, |x| x.relu());
}

#[test]
fn scalar_ops_and_affine() {
    check_unary("add_scalar", any, |x| x.add_scalar(1.5));
    check_unary("sub_scalar", any, |x| x.sub_scalar(-0.25));
    check_unary("mul_scalar", any, |x| x.mul_scalar(-3.0));
    check_unary("div_scalar", any, |x| x.div_scalar(4.0));
    check_unary("affine", any, |x| x.affine(0.7, -2.0));
}

#[test]
fn clamp() {
    // Keep every element at least 0.05 away from the bounds ±0.5.
    let keep_off_bounds = |shape: &[usize], seed: u64| {
        map(&randn(shape, seed), |x| {
            if (x.abs() - 0.5).abs() < 0.05 {
                x * 1.3
            } else {
                x
            }
        })
    };
    check_unary("clamp", keep_off_bounds, |x| x.clamp(-0.5, 0.5));
    check_unary("clamp lower only", keep_off_bounds, |x| {
        x.clamp(-0.5, f64::INFINITY)
    });
}

// ---- binary ---------------------------------------------------------------

/// Shape pairs covering equal shapes, NumPy broadcasting both ways, 0-d
/// operands and seeded random shapes.
fn binary_shape_pairs() -> Vec<(Vec<usize>, Vec<usize>)> {
    let r = random_shape(3, 4, 21);
    let mut r_bcast = r.clone();
    r_bcast[1] = 1;
    vec![
        (vec![3, 4], vec![3, 4]),
        (vec![2, 3, 4], vec![3, 1]),
        (vec![4], vec![2, 1, 4]),
        (vec![], vec![2, 3]),
        (vec![2, 3], vec![]),
        (vec![], vec![]),
        (vec![2, 1, 3], vec![1, 4, 1]),
        (r.clone(), r_bcast),
        (r.clone(), r[1..].to_vec()),
    ]
}

fn check_binary(
    name: &str,
    lhs: impl Fn(&[usize], u64) -> Tensor,
    rhs: impl Fn(&[usize], u64) -> Tensor,
    op: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) {
    for (i, (sa, sb)) in binary_shape_pairs().iter().enumerate() {
        let (a, b) = (lhs(sa, 200 + i as u64), rhs(sb, 300 + i as u64));
        check(&format!("{name} {sa:?} {sb:?}"), &[a, b], |v| {
            op(&v[0], &v[1])
        });
    }
    // Non-contiguous operands: a permuted [4,2,3]→[2,3,4] against a
    // narrowed [3,6]→[3,4], which also broadcasts over the leading axis.
    let (a, b) = (lhs(&[4, 2, 3], 31), rhs(&[3, 6], 32));
    check(&format!("{name} strided"), &[a, b], |v| {
        op(&v[0].permute(&[1, 2, 0])?, &v[1].narrow(1, 1, 4)?)
    });
    // The same tensor on both sides (one leaf, two uses).
    let a = lhs(&[2, 3], 33);
    check(&format!("{name} same input twice"), &[a], |v| {
        op(&v[0], &v[0])
    });
}

#[test]
fn add() {
    check_binary("add", any, any, |a, b| a.add(b));
}

#[test]
fn sub() {
    check_binary("sub", any, any, |a, b| a.sub(b));
}

#[test]
fn mul() {
    check_binary("mul", any, any, |a, b| a.mul(b));
}

#[test]
fn div() {
    check_binary("div", any, nonzero, |a, b| a.div(b));
}

/// maximum/minimum away from ties: one operand is ±(|x| + 3), the other
/// is clamped to [−1.5, 1.5], so |a − b| ≥ 1.5 wherever they meet and
/// about half the elements pick each side.
fn check_extremum_binary(name: &str, op: impl Fn(&Tensor, &Tensor) -> Result<Tensor>) {
    let big = |shape: &[usize], seed: u64| away_from_zero(shape, seed, 3.0);
    let small = |shape: &[usize], seed: u64| randn(shape, seed).clamp(-1.5, 1.5).unwrap();
    check_binary(name, big, small, &op);
    check_binary(&format!("{name} swapped"), small, big, &op);
}

#[test]
fn maximum() {
    check_extremum_binary("maximum", |a, b| a.maximum(b));
}

#[test]
fn minimum() {
    check_extremum_binary("minimum", |a, b| a.minimum(b));
}

#[test]
fn where_cond() {
    let cond = |shape: &[usize], seed: u64| map(&randn(shape, seed), |x| (x > 0.0) as u8 as f64);
    // cond [2,3] with a [2,3], b [3]; cond [] with a [2,1], b [3];
    // cond [3,1] broadcast against a [3,4].
    let cases: [(&[usize], &[usize], &[usize]); 3] = [
        (&[2, 3], &[2, 3], &[3]),
        (&[], &[2, 1], &[3]),
        (&[3, 1], &[3, 4], &[3, 4]),
    ];
    for (i, (sc, sa, sb)) in cases.iter().enumerate() {
        let c = cond(sc, 40 + i as u64);
        let (a, b) = (randn(sa, 50 + i as u64), randn(sb, 60 + i as u64));
        check(&format!("where {sc:?} {sa:?} {sb:?}"), &[a, b], |v| {
            Tensor::where_cond(&c, &v[0], &v[1])
        });
    }
    // The same tensor as both branches, through a transposed view.
    let c = cond(&[3, 2], 70);
    check("where same input", &[randn(&[2, 3], 71)], |v| {
        let t = v[0].transpose(0, 1)?;
        Tensor::where_cond(&c, &t, &t.exp()?)
    });
}

// ---- reductions -----------------------------------------------------------

/// Every subset of axes of a rank-3 tensor (and the empty set), with and
/// without keepdim, on a contiguous and a permuted input.
fn check_reduction(
    name: &str,
    input: impl Fn(&[usize], u64) -> Tensor,
    op: impl Fn(&Tensor, &[usize], bool) -> Result<Tensor>,
) {
    let axis_sets: [&[usize]; 8] = [&[], &[0], &[1], &[2], &[0, 1], &[0, 2], &[1, 2], &[2, 0, 1]];
    let shape = [2, 3, 4];
    for (i, axes) in axis_sets.iter().enumerate() {
        for keep in [false, true] {
            let x = input(&shape, 400 + i as u64);
            check(&format!("{name} {axes:?} keep={keep}"), &[x], |v| {
                op(&v[0], axes, keep)
            });
            let x = input(&[4, 2, 3], 500 + i as u64);
            check(
                &format!("{name} permuted {axes:?} keep={keep}"),
                &[x],
                |v| op(&v[0].permute(&[1, 2, 0])?, axes, keep),
            );
        }
    }
    let r = random_shape(4, 3, 13);
    check(&format!("{name} random {r:?}"), &[input(&r, 41)], |v| {
        op(&v[0], &[1, 3], false)
    });
    check(&format!("{name} of 0-d"), &[input(&[], 42)], |v| {
        op(&v[0], &[], false)
    });
}

#[test]
fn sum() {
    check_reduction("sum", any, |x, a, k| x.sum(a, k));
}

#[test]
fn mean() {
    check_reduction("mean", any, |x, a, k| x.mean(a, k));
}

#[test]
fn max() {
    // Distinct values (ties are ~impossible for normal samples at 1e-6).
    check_reduction("max", any, |x, a, k| x.max(a, k));
}

#[test]
fn min() {
    check_reduction("min", any, |x, a, k| x.min(a, k));
}

#[test]
fn sum_all_and_mean_all() {
    for shape in unary_shapes() {
        check(&format!("sum_all {shape:?}"), &[randn(&shape, 1)], |v| {
            v[0].sum_all()
        });
        check(&format!("mean_all {shape:?}"), &[randn(&shape, 2)], |v| {
            v[0].mean_all()
        });
    }
    check("sum_all transposed", &[randn(&[3, 4], 3)], |v| {
        v[0].transpose(0, 1)?.sum_all()
    });
}

#[test]
fn sum_to() {
    let cases: [(&[usize], &[usize]); 7] = [
        (&[2, 3, 4], &[3, 1]),
        (&[2, 3, 4], &[4]),
        (&[2, 3, 4], &[1, 1, 4]),
        (&[2, 3, 4], &[]),
        (&[2, 3, 4], &[2, 1, 4]),
        (&[2, 3, 4], &[2, 3, 4]),
        (&[3, 1], &[1]),
    ];
    for (i, (from, to)) in cases.iter().enumerate() {
        check(
            &format!("sum_to {from:?}→{to:?}"),
            &[randn(from, i as u64)],
            |v| v[0].sum_to(to),
        );
    }
}

// ---- matmul ---------------------------------------------------------------

#[test]
fn matmul() {
    let cases: [(&[usize], &[usize]); 8] = [
        (&[3, 4], &[4, 5]),
        (&[1, 4], &[4, 1]),
        (&[2, 3, 4], &[2, 4, 5]),
        (&[2, 2, 3, 4], &[2, 2, 4, 2]),
        (&[2, 1, 3, 4], &[5, 4, 2]),
        (&[3, 4], &[2, 4, 5]),
        (&[2, 3, 4], &[4, 2]),
        (&[1, 3, 4], &[2, 1, 4, 2]),
    ];
    for (i, (sa, sb)) in cases.iter().enumerate() {
        let (a, b) = (randn(sa, 600 + i as u64), randn(sb, 700 + i as u64));
        check(&format!("matmul {sa:?}@{sb:?}"), &[a, b], |v| {
            v[0].matmul(&v[1])
        });
    }
    let r = random_shape(3, 4, 14);
    let (a, b) = (randn(&r, 81), randn(&[r[0], r[2], 3], 82));
    check(&format!("matmul random {r:?}"), &[a, b], |v| {
        v[0].matmul(&v[1])
    });
}

#[test]
fn matmul_transposed_and_strided_operands() {
    // Aᵀ from a [4,3] leaf and B from a permuted [5,2,4] → [2,4,5].
    let (a, b) = (randn(&[4, 3], 90), randn(&[5, 2, 4], 91));
    check("matmul Aᵀ @ permuted B", &[a, b], |v| {
        v[0].transpose(0, 1)?.matmul(&v[1].permute(&[1, 2, 0])?)
    });
    // A narrowed along k, B transposed.
    let (a, b) = (randn(&[2, 3, 6], 92), randn(&[5, 4], 93));
    check("matmul narrowed A @ Bᵀ", &[a, b], |v| {
        v[0].narrow(2, 1, 4)?.matmul(&v[1].transpose(0, 1)?)
    });
    // A broadcast view (stride 0 rows) and X·Xᵀ with one input.
    check("matmul X Xᵀ", &[randn(&[3, 4], 94)], |v| {
        v[0].matmul(&v[0].transpose(0, 1)?)
    });
    check(
        "matmul broadcast rows",
        &[randn(&[4], 95), randn(&[4, 2], 96)],
        |v| v[0].broadcast_to(&[3, 4])?.matmul(&v[1]),
    );
}

// ---- softmax ----------------------------------------------------------------

#[test]
fn softmax_and_log_softmax_every_axis() {
    let shape = [2, 3, 4];
    for axis in 0..3 {
        for log in [false, true] {
            let name = format!(
                "{} axis {axis}",
                if log { "log_softmax" } else { "softmax" }
            );
            let f = move |t: &Tensor| {
                if log {
                    t.log_softmax(axis)
                } else {
                    t.softmax(axis)
                }
            };
            check(&name, &[randn(&shape, 110 + axis as u64)], |v| f(&v[0]));
            check(
                &format!("{name} permuted"),
                &[randn(&[4, 2, 3], 120)],
                |v| f(&v[0].permute(&[1, 2, 0])?),
            );
            // Large logits: the max-subtraction must keep this finite.
            let big = map(&randn(&shape, 130), |x| 50.0 * x);
            check(&format!("{name} large logits"), &[big], |v| f(&v[0]));
        }
    }
    check("softmax 1-d", &[randn(&[6], 140)], |v| v[0].softmax(0));
    check("log_softmax size-1 axis", &[randn(&[3, 1], 141)], |v| {
        v[0].log_softmax(1)
    });
}

// ---- indexing ---------------------------------------------------------------

#[test]
fn index_select_and_gather_rows() {
    let ids = [0usize, 2, 2, 4, 0, 1];
    check("index_select axis 0", &[randn(&[5, 3], 150)], |v| {
        v[0].index_select(0, &ids)
    });
    check("index_select axis 1", &[randn(&[2, 5, 3], 151)], |v| {
        v[0].index_select(1, &ids)
    });
    check("index_select last axis", &[randn(&[2, 5], 152)], |v| {
        v[0].index_select(1, &[4, 4, 4])
    });
    check("index_select transposed", &[randn(&[3, 5], 153)], |v| {
        v[0].transpose(0, 1)?.index_select(0, &ids)
    });
    check("index_select no ids", &[randn(&[5, 3], 154)], |v| {
        v[0].index_select(0, &[])
    });
    let id_tensor = Tensor::from_vec(&[3.0, 1.0, 3.0], &[3], DType::F64, Device::Cpu).unwrap();
    check("gather_rows", &[randn(&[4, 2], 155)], |v| {
        v[0].gather_rows(0, &id_tensor)
    });
}

// ---- nn composites ------------------------------------------------------------

#[test]
fn dropout_with_a_fixed_mask() {
    // A fresh generator with the same seed in each evaluation gives the same
    // mask, so the function is deterministic and linear in x.
    for (i, shape) in unary_shapes().iter().enumerate() {
        check(
            &format!("dropout {shape:?}"),
            &[randn(shape, 160 + i as u64)],
            |v| {
                let mut rng = Philox::new(77);
                v[0].dropout(0.3, true, &mut rng)
            },
        );
    }
    check("dropout transposed", &[randn(&[4, 3], 170)], |v| {
        let mut rng = Philox::new(78);
        v[0].transpose(0, 1)?.dropout(0.5, true, &mut rng)
    });
    check("dropout eval is identity", &[randn(&[4, 3], 171)], |v| {
        let mut rng = Philox::new(79);
        v[0].dropout(0.5, false, &mut rng)
    });
}

#[test]
fn mse_loss() {
    for (i, shape) in unary_shapes().iter().enumerate() {
        let (p, t) = (randn(shape, 180 + i as u64), randn(shape, 190 + i as u64));
        check(&format!("mse_loss {shape:?}"), &[p, t], |v| {
            v[0].mse_loss(&v[1])
        });
    }
    check(
        "mse_loss transposed",
        &[randn(&[4, 3], 195), randn(&[3, 4], 196)],
        |v| v[0].transpose(0, 1)?.mse_loss(&v[1]),
    );
}

// ---- views and copies ---------------------------------------------------------

#[test]
fn reshape_and_reshape_infer() {
    check("reshape", &[randn(&[2, 3, 4], 200)], |v| {
        v[0].reshape(&[4, 6])
    });
    check("reshape to 0-d", &[randn(&[1, 1], 201)], |v| {
        v[0].reshape(&[])
    });
    check("reshape from 0-d", &[randn(&[], 202)], |v| {
        v[0].reshape(&[1, 1, 1])
    });
    check("reshape_infer", &[randn(&[2, 3, 4], 203)], |v| {
        v[0].reshape_infer(&[-1, 4, 2])
    });
    // A permuted input is not contiguous: reshape copies, the gradient must
    // still find its way back through the permutation.
    check("reshape of permuted", &[randn(&[2, 3, 4], 204)], |v| {
        v[0].permute(&[2, 0, 1])?.reshape_infer(&[4, -1])
    });
}

#[test]
fn permute_and_transpose() {
    check("permute", &[randn(&[2, 3, 4], 210)], |v| {
        v[0].permute(&[2, 0, 1])
    });
    check("permute twice", &[randn(&[2, 3, 4, 2], 211)], |v| {
        v[0].permute(&[3, 1, 0, 2])?.permute(&[1, 0, 3, 2])
    });
    check("transpose", &[randn(&[3, 5], 212)], |v| {
        v[0].transpose(1, 0)
    });
    check("transpose middle", &[randn(&[2, 3, 4], 213)], |v| {
        v[0].transpose(0, 2)?.exp()
    });
}

#[test]
fn narrow() {
    for axis in 0..3 {
        check(
            &format!("narrow axis {axis}"),
            &[randn(&[3, 4, 5], 220)],
            |v| v[0].narrow(axis, 1, 2),
        );
    }
    check("narrow of narrow", &[randn(&[6, 4], 221)], |v| {
        v[0].narrow(0, 1, 4)?.narrow(1, 2, 2)?.narrow(0, 2, 2)
    });
    check("narrow transposed", &[randn(&[6, 4], 222)], |v| {
        v[0].transpose(0, 1)?.narrow(1, 3, 3)
    });
    check("narrow empty", &[randn(&[3, 4], 223)], |v| {
        v[0].narrow(1, 2, 0)
    });
}

#[test]
fn pad_zeros() {
    // TF 'SAME' before a stride-2 conv: 0 top/left, 1 bottom/right.
    check("pad_zeros tf-same", &[randn(&[2, 3, 4, 4], 224)], |v| {
        v[0].pad_zeros(&[(0, 0), (0, 0), (0, 1), (0, 1)])
    });
    check("pad_zeros every axis", &[randn(&[2, 3, 2], 225)], |v| {
        v[0].pad_zeros(&[(1, 0), (2, 3), (0, 2)])
    });
    check("pad_zeros transposed", &[randn(&[3, 5], 226)], |v| {
        v[0].transpose(0, 1)?.pad_zeros(&[(1, 1), (0, 2)])
    });
    // The whole TF-SAME downsample: pad, then a stride-2 conv with pad 0.
    check(
        "pad_zeros then stride-2 conv",
        &[randn(&[1, 2, 6, 6], 227), randn(&[3, 2, 3, 3], 228)],
        |v| {
            v[0].pad_zeros(&[(0, 0), (0, 0), (0, 1), (0, 1)])?
                .conv2d(&v[1], None, 2, 0)
        },
    );
}

#[test]
fn pad_zeros_values_and_errors() {
    let x = Tensor::from_vec(&[1.0, 2.0, 3.0, 4.0], &[2, 2], DType::F64, Device::Cpu).unwrap();
    let y = x.pad_zeros(&[(0, 1), (1, 0)]).unwrap();
    assert_eq!(y.shape(), &[3, 3]);
    assert_eq!(
        y.to_vec_f64(),
        vec![0.0, 1.0, 2.0, 0.0, 3.0, 4.0, 0.0, 0.0, 0.0]
    );
    let err = x.pad_zeros(&[(0, 1)]).unwrap_err().to_string();
    assert!(
        err.contains("1 (before, after) pairs for a rank-2 tensor"),
        "{err}"
    );
}

#[test]
fn broadcast_to() {
    let cases: [(&[usize], &[usize]); 4] = [
        (&[3, 1], &[2, 3, 4]),
        (&[4], &[3, 4]),
        (&[], &[2, 2]),
        (&[2, 1, 3], &[2, 5, 3]),
    ];
    for (i, (from, to)) in cases.iter().enumerate() {
        check(
            &format!("broadcast_to {from:?}→{to:?}"),
            &[randn(from, 230 + i as u64)],
            |v| v[0].broadcast_to(to),
        );
    }
    check("broadcast_to of transposed", &[randn(&[1, 3], 235)], |v| {
        v[0].transpose(0, 1)?.broadcast_to(&[2, 3, 4])?.exp()
    });
}

#[test]
fn unsqueeze_and_squeeze() {
    for axis in 0..=2 {
        check(&format!("unsqueeze {axis}"), &[randn(&[3, 4], 240)], |v| {
            v[0].unsqueeze(axis)
        });
    }
    check("unsqueeze 0-d", &[randn(&[], 241)], |v| v[0].unsqueeze(0));
    check("squeeze", &[randn(&[3, 1, 4], 242)], |v| v[0].squeeze(1));
    check("squeeze to 0-d", &[randn(&[1], 243)], |v| v[0].squeeze(0));
    check(
        "unsqueeze transposed then squeeze",
        &[randn(&[3, 4], 244)],
        |v| v[0].transpose(0, 1)?.unsqueeze(1)?.exp()?.squeeze(1),
    );
}

#[test]
fn contiguous() {
    check("contiguous of permuted", &[randn(&[2, 3, 4], 250)], |v| {
        v[0].permute(&[1, 2, 0])?.contiguous()
    });
    check("contiguous of contiguous", &[randn(&[2, 3], 251)], |v| {
        v[0].contiguous()
    });
    check("contiguous of narrowed", &[randn(&[5, 3], 252)], |v| {
        v[0].narrow(1, 1, 2)?.contiguous()
    });
}

#[test]
fn concat() {
    for axis in 0..3 {
        let mut shapes = [[2, 3, 4]; 3];
        for (i, s) in shapes.iter_mut().enumerate() {
            s[axis] = i + 1;
        }
        let inputs: Vec<Tensor> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| randn(s, 260 + i as u64))
            .collect();
        check(&format!("concat axis {axis}"), &inputs, |v| {
            Tensor::concat(&[&v[0], &v[1], &v[2]], axis)
        });
    }
    // Strided pieces and one input used twice.
    let (a, b) = (randn(&[3, 2], 270), randn(&[2, 5], 271));
    check("concat strided, repeated input", &[a, b], |v| {
        let bt = v[1].transpose(0, 1)?.narrow(0, 1, 3)?;
        Tensor::concat(&[&v[0], &bt, &v[0]], 1)
    });
}

#[test]
fn split_and_chunk() {
    // Pieces recombined with different weights so each piece's gradient is
    // distinguishable.
    check("split", &[randn(&[2, 6, 3], 280)], |v| {
        let p = v[0].split(1, &[1, 3, 2])?;
        p[0].mul(&p[2].narrow(1, 0, 1)?)?
            .add(&p[1].sum(&[1], true)?)
    });
    check("chunk", &[randn(&[4, 6], 281)], |v| {
        let p = v[0].chunk(3, 1)?;
        p[0].mul(&p[1])?.sub(&p[2].exp()?)
    });
    check("chunk transposed", &[randn(&[6, 4], 282)], |v| {
        let p = v[0].transpose(0, 1)?.chunk(2, 1)?;
        Tensor::concat(&[&p[1], &p[0]], 0)
    });
}

#[test]
fn to_dtype() {
    // f64 → f64 is the identity.
    check("to_dtype f64", &[randn(&[3, 4], 290)], |v| {
        v[0].to_dtype(DType::F64)
    });
    // Through f32 and back: linear, so a large step makes central
    // differences exact up to f32 rounding (~1e-7 relative / 2h).
    let opts = GradcheckOptions {
        step: 1e-2,
        atol: 1e-4,
        rtol: 1e-4,
    };
    check_with("to_dtype via f32", &[randn(&[3, 4], 291)], opts, |v| {
        v[0].to_dtype(DType::F32)?
            .mul_scalar(3.0)?
            .to_dtype(DType::F64)
    });
}

// ---- graphs with shared inputs --------------------------------------------

#[test]
fn repeated_use_of_one_input() {
    check("x*x", &[randn(&[3, 4], 300)], |v| v[0].mul(&v[0]));
    check("x used by two branches", &[randn(&[3, 4], 301)], |v| {
        let x = &v[0];
        x.exp()?.mul(&x.tanh()?)?.add(x)
    });
    check("diamond through views", &[randn(&[3, 4], 302)], |v| {
        let x = &v[0];
        let a = x.transpose(0, 1)?.sigmoid()?;
        let b = x.sum(&[0], false)?.unsqueeze(1)?;
        a.mul(&b)?.add(&a.square()?)
    });
    check("deep reuse", &[randn(&[2, 3], 303)], |v| {
        let mut h = v[0].clone();
        for _ in 0..5 {
            h = h.tanh()?.add(&v[0])?.mul_scalar(0.5)?;
        }
        h.mul(&v[0])
    });
    let (w, b) = (randn(&[4, 3], 304), randn(&[3], 305));
    check("two-layer net", &[randn(&[5, 4], 306), w, b], |v| {
        let h = v[0].matmul(&v[1])?.add(&v[2])?.silu()?;
        h.matmul(&v[1].transpose(0, 1)?)?.log_softmax(1)
    });
}

// ---- the checker itself ---------------------------------------------------

/// gradcheck must reject a wrong derivative: an op computing 2x whose
/// recorded backward claims 3 (a deliberately planted bug).
#[test]
fn gradcheck_rejects_a_wrong_gradient() {
    use noisegrad_engine::autograd::record;
    let wrong_double = |x: &Tensor| -> Result<Tensor> {
        let out = noisegrad_engine::no_grad(|| x.mul_scalar(2.0))?;
        Ok(record(out, "wrong_double", &[x], || {
            Box::new(|g, _| Ok(vec![Some(g.mul_scalar(3.0)?)]))
        }))
    };
    let r = noisegrad_engine::gradcheck::gradcheck(
        |v| wrong_double(&v[0]),
        &[randn(&[3], 310)],
        GradcheckOptions::default(),
    );
    let msg = r
        .expect_err("a wrong gradient passed gradcheck")
        .to_string();
    assert!(msg.contains("analytic"), "{msg}");
}
