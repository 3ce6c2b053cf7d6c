//! The tape's contract: accumulation, no_grad, which inputs get gradients,
//! deep graphs, and the errors of misuse. (Memory behaviour is tested in
//! `memory.rs`, a binary of its own because the byte counters are global.)

mod common;

use common::randn;
use noisegrad_engine::autograd::{self, record, refuse_tracked};
use noisegrad_engine::{DType, Device, Error, Result, Tensor, no_grad};
use std::sync::{Arc, Mutex};

fn leaf(values: &[f64]) -> Tensor {
    Tensor::from_vec(values, &[values.len()], DType::F64, Device::Cpu)
        .unwrap()
        .set_requires_grad(true)
}

fn grad_of(t: &Tensor) -> Vec<f64> {
    t.grad().expect("a gradient").to_vec_f64()
}

#[test]
fn gradients_accumulate_until_zero_grad() {
    let x = leaf(&[1.0, -2.0, 3.0]);
    let loss = |x: &Tensor| x.mul(x).unwrap().sum_all().unwrap();
    loss(&x).backward().unwrap();
    assert_eq!(grad_of(&x), [2.0, -4.0, 6.0]);
    loss(&x).backward().unwrap();
    assert_eq!(grad_of(&x), [4.0, -8.0, 12.0], "second backward adds");
    x.zero_grad();
    assert!(x.grad().is_none(), "zero_grad clears");
    loss(&x).backward().unwrap();
    assert_eq!(grad_of(&x), [2.0, -4.0, 6.0], "fresh after zero_grad");
}

#[test]
fn first_gradient_is_stored_not_added_to_zeros() {
    // 0 + (−0) = +0, so a first gradient of −0 survives only if stored.
    let x = leaf(&[1.5, 2.5]);
    let minus_zero = Tensor::from_vec(&[-0.0, -0.0], &[2], DType::F64, Device::Cpu).unwrap();
    x.mul(&minus_zero)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g = grad_of(&x);
    assert!(
        g.iter().all(|v| *v == 0.0 && v.is_sign_negative()),
        "first gradient was added to zeros: {g:?}"
    );
    // And the exact value, not an approximation.
    let y = leaf(&[0.25, -4.0]);
    y.mul_scalar(3.0)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(grad_of(&y), [3.0, 3.0]);
}

#[test]
fn leaf_used_twice_sums_both_paths() {
    let x = leaf(&[2.0]);
    // y = x·x + 3x → dy/dx = 2x + 3 = 7
    let y = x.mul(&x).unwrap().add(&x.mul_scalar(3.0).unwrap()).unwrap();
    y.sum_all().unwrap().backward().unwrap();
    assert_eq!(grad_of(&x), [7.0]);
}

#[test]
fn no_grad_records_nothing() {
    let x = leaf(&[1.0, 2.0]);
    let y = no_grad(|| x.exp().unwrap().mul(&x).unwrap());
    assert!(!y.requires_grad(), "no_grad result is tracked");
    assert!(autograd::is_grad_enabled(), "no_grad restores the mode");
    let err = y.sum_all().unwrap().backward().unwrap_err();
    assert!(err.to_string().contains("does not require grad"), "{err}");
    // Nested guards restore the outer mode.
    no_grad(|| {
        no_grad(|| {});
        assert!(!autograd::is_grad_enabled());
    });
    assert!(autograd::is_grad_enabled());
}

#[test]
fn detach_and_untracked_leaves_get_no_gradient() {
    let x = leaf(&[1.0, 2.0]);
    let c = Tensor::from_vec(&[3.0, 4.0], &[2], DType::F64, Device::Cpu).unwrap();
    let d = x.detach();
    assert!(!d.requires_grad());
    x.mul(&c)
        .unwrap()
        .add(&d)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(grad_of(&x), [3.0, 4.0], "the detached path adds nothing");
    assert!(c.grad().is_none() && d.grad().is_none());
}

/// An op recording which inputs its backward was asked to differentiate.
fn spy(inputs: &[&Tensor], seen: Arc<Mutex<Vec<bool>>>) -> Tensor {
    let out = no_grad(|| inputs[0].add(inputs[1])).unwrap();
    record(out, "spy", inputs, move || {
        Box::new(move |g, needs| {
            *seen.lock().unwrap() = needs.to_vec();
            Ok(needs.iter().map(|&n| n.then(|| g.clone())).collect())
        })
    })
}

#[test]
fn inputs_that_need_no_gradient_are_not_differentiated() {
    let x = leaf(&[1.0, 2.0]);
    // A non-leaf constant: computed from untracked tensors, so untracked.
    let a = Tensor::from_vec(&[0.5, 0.5], &[2], DType::F64, Device::Cpu).unwrap();
    let constant = a.exp().unwrap().mul_scalar(2.0).unwrap();
    assert!(!constant.requires_grad());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let y = spy(&[&x, &constant], seen.clone());
    y.sum_all().unwrap().backward().unwrap();
    assert_eq!(*seen.lock().unwrap(), [true, false]);
    assert!(constant.grad().is_none() && a.grad().is_none());
    // The same through a tracked intermediate on the other side.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let y = spy(&[&constant, &x.exp().unwrap()], seen.clone());
    y.sum_all().unwrap().backward().unwrap();
    assert_eq!(*seen.lock().unwrap(), [false, true]);
}

#[test]
fn backward_closures_that_break_the_contract_are_errors() {
    let x = leaf(&[1.0, 2.0]);
    let missing = record(x.detach(), "forgetful", &[&x], || {
        Box::new(|_, _| Ok(vec![None]))
    });
    let err = missing
        .sum_all()
        .unwrap()
        .backward()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("forgetful") && err.contains("no gradient"),
        "{err}"
    );

    let wrong_shape = record(x.detach(), "misshapen", &[&x], || {
        Box::new(|_, _| Ok(vec![Some(Tensor::zeros(&[3], DType::F64, Device::Cpu)?)]))
    });
    let err = wrong_shape
        .sum_all()
        .unwrap()
        .backward()
        .unwrap_err()
        .to_string();
    assert!(err.contains("misshapen") && err.contains("[3]"), "{err}");

    let wrong_count = record(x.detach(), "greedy", &[&x], || {
        Box::new(|g, _| Ok(vec![Some(g.clone()), Some(g.clone())]))
    });
    let err = wrong_count
        .sum_all()
        .unwrap()
        .backward()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("greedy") && err.contains("2 gradients"),
        "{err}"
    );
}

#[test]
fn backward_twice_on_one_graph_is_a_clear_error() {
    let x = leaf(&[1.0, 2.0]);
    let loss = x.exp().unwrap().sum_all().unwrap();
    loss.backward().unwrap();
    let err = loss.backward().unwrap_err();
    assert!(matches!(err, Error::Backward(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("already back-propagated"), "{msg}");
    // The first pass's gradient is untouched by the failed second one.
    let e = [1f64.exp(), 2f64.exp()];
    assert_eq!(grad_of(&x), e);
}

#[test]
fn backward_needs_a_scalar_and_a_matching_seed() {
    let x = leaf(&[1.0, 2.0]);
    let y = x.exp().unwrap();
    let err = y.backward().unwrap_err().to_string();
    assert!(err.contains("backward") && err.contains("[2]"), "{err}");
    let seed = Tensor::ones(&[3], DType::F64, Device::Cpu).unwrap();
    let err = y.backward_with(&seed).unwrap_err().to_string();
    assert!(err.contains("[3]") && err.contains("[2]"), "{err}");
    // backward_with on a non-scalar is fine with a seed of the right shape.
    let seed = Tensor::from_vec(&[1.0, 10.0], &[2], DType::F64, Device::Cpu).unwrap();
    y.backward_with(&seed).unwrap();
    assert_eq!(grad_of(&x), [1f64.exp(), 10.0 * 2f64.exp()]);
}

#[test]
fn backward_from_a_leaf_or_untracked_tensor() {
    let x = Tensor::scalar(2.0, DType::F64, Device::Cpu)
        .unwrap()
        .set_requires_grad(true);
    x.backward().unwrap();
    assert_eq!(grad_of(&x), [1.0]);
    let c = Tensor::scalar(2.0, DType::F64, Device::Cpu).unwrap();
    assert!(c.backward().is_err());
}

#[test]
fn ops_without_backward_refuse_tracked_inputs() {
    let x = leaf(&[1.0]);
    let c = Tensor::from_vec(&[1.0], &[1], DType::F64, Device::Cpu).unwrap();
    let err = refuse_tracked("argmax", &[&c, &x]).unwrap_err();
    assert!(matches!(err, Error::NoBackward { op: "argmax" }));
    assert!(err.to_string().contains("argmax"));
    // Tracked results of tracked inputs are refused as well.
    assert!(refuse_tracked("argmax", &[&x.exp().unwrap()]).is_err());
    refuse_tracked("argmax", &[&c]).unwrap();
    refuse_tracked("argmax", &[&x.detach()]).unwrap();
    no_grad(|| refuse_tracked("argmax", &[&x])).unwrap();
}

#[test]
fn gradients_have_the_input_dtype() {
    let x = randn(&[3], 1)
        .to_dtype(DType::F32)
        .unwrap()
        .set_requires_grad(true);
    let y = x
        .to_dtype(DType::F64)
        .unwrap()
        .square()
        .unwrap()
        .sum_all()
        .unwrap();
    y.backward().unwrap();
    let g = x.grad().unwrap();
    assert_eq!(g.dtype(), DType::F32);
    let want: Vec<f64> = x.to_vec_f64().iter().map(|v| 2.0 * v).collect();
    common::assert_close("f32 grad", &g.to_vec_f64(), &want, 1e-6);
}

/// 100 000 chained ops: backward walks them iteratively, and dropping the
/// graph must not recurse either. Runs on a thread with a small stack so a
/// recursive walk or drop would overflow deterministically.
#[test]
fn very_deep_graph_backward_and_drop_do_not_overflow() {
    const DEPTH: usize = 100_000;
    let run = || -> Result<()> {
        let x = leaf(&[1.0, 2.0]);
        let one = Tensor::from_vec(&[1.0, 1.0], &[2], DType::F64, Device::Cpu)?;
        let mut h = x.clone();
        for _ in 0..DEPTH {
            h = h.add(&one)?;
        }
        let loss = h.sum_all()?;
        loss.backward()?;
        assert_eq!(grad_of(&x), [1.0, 1.0]);
        assert_eq!(h.to_vec_f64(), [1.0 + DEPTH as f64, 2.0 + DEPTH as f64]);
        drop(loss);
        drop(h); // the whole chain goes here
        // A chain that was never back-propagated (closures still alive).
        let mut h = x.clone();
        for _ in 0..DEPTH {
            h = h.mul_scalar(1.0)?;
        }
        drop(h);
        Ok(())
    };
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(run)
        .unwrap()
        .join()
        .expect("deep graph overflowed the stack")
        .unwrap();
}

#[test]
fn gradient_reaches_a_leaf_through_views_and_many_consumers() {
    // x feeds 50 branches of different lengths; dL/dx = Σ_i (i + 1) · 1.
    let x = leaf(&[1.0, -1.0]);
    let mut total = x.mul_scalar(0.0).unwrap();
    for i in 0..50 {
        let mut b = x.unsqueeze(0).unwrap();
        for _ in 0..i {
            b = b.transpose(0, 1).unwrap().transpose(0, 1).unwrap();
        }
        total = total
            .add(&b.squeeze(0).unwrap().mul_scalar((i + 1) as f64).unwrap())
            .unwrap();
    }
    total.sum_all().unwrap().backward().unwrap();
    let want = (1..=50).sum::<usize>() as f64;
    assert_eq!(grad_of(&x), [want, want]);
}

#[test]
fn ops_over_views_of_one_buffer() -> Result<()> {
    // where(c, x, xᵀ-view) and a softmax seeded with its own output read one
    // buffer through several handles at once.
    let x = randn(&[3, 3], 9).set_requires_grad(true);
    let c = x.gt(&x.transpose(0, 1)?)?;
    let w = Tensor::where_cond(&c, &x, &x.transpose(0, 1)?)?;
    w.sum_all()?.backward()?;
    let g = grad_of(&x);
    assert!(g.iter().all(|&v| v == 1.0 || v == 0.0 || v == 2.0), "{g:?}");
    let y = x.softmax(1)?;
    y.backward_with(&y)?;
    Ok(())
}

#[test]
fn second_loss_through_an_already_used_subgraph_is_an_error() {
    // Two losses share y = exp(x); the first backward frees exp's saved
    // output, so the second must fail clearly (run the forward again).
    let x = leaf(&[0.5, 1.5]);
    let y = x.exp().unwrap();
    let l1 = y.sum_all().unwrap();
    let l2 = y.mul_scalar(2.0).unwrap().sum_all().unwrap();
    l1.backward().unwrap();
    let err = l2.backward().unwrap_err().to_string();
    assert!(
        err.contains("'exp'") && err.contains("forward pass again"),
        "{err}"
    );
    // Summing the losses first and back-propagating once works.
    let x = leaf(&[0.5, 1.5]);
    let y = x.exp().unwrap();
    let total = y
        .sum_all()
        .unwrap()
        .add(&y.mul_scalar(2.0).unwrap().sum_all().unwrap())
        .unwrap();
    total.backward().unwrap();
    assert_eq!(grad_of(&x), [3.0 * 0.5f64.exp(), 3.0 * 1.5f64.exp()]);
}
