//! Memory behaviour of the tape, read from `engine::memory::stats`.
//!
//! The byte counters are process-global, so this binary holds a single
//! `#[test]` that runs its cases one after another.

use noisegrad_engine::autograd::record;
use noisegrad_engine::memory::{reset_peak, stats};
use noisegrad_engine::{DType, Device, Philox, Tensor, no_grad};
use std::sync::{Arc, Mutex};

/// Elements per activation: 512 KiB in f64, far above any bookkeeping.
const N: usize = 1 << 16;
const S: usize = N * 8;
const DEPTH: usize = 50;

fn live() -> usize {
    stats(Device::Cpu).live_bytes
}

fn input() -> Tensor {
    let mut rng = Philox::new(5);
    Tensor::randn(&[N], DType::F64, Device::Cpu, &mut rng)
        .unwrap()
        .set_requires_grad(true)
}

/// An identity op whose backward notes the live bytes when it runs.
fn probe(x: &Tensor, log: &Arc<Mutex<Vec<usize>>>) -> Tensor {
    let log = log.clone();
    record(x.detach(), "probe", &[x], move || {
        Box::new(move |g, _| {
            log.lock().unwrap().push(live());
            Ok(vec![Some(g.clone())])
        })
    })
}

/// Asserts `got` is within half an activation of `want`.
fn assert_about(what: &str, got: usize, want: usize) {
    let diff = got.abs_diff(want);
    assert!(
        diff < S / 2,
        "{what}: {got} bytes, expected about {want} ({:.2} activations off)",
        diff as f64 / S as f64
    );
}

#[test]
fn tape_memory() {
    no_grad_saves_nothing();
    ops_whose_derivative_needs_nothing_save_nothing();
    backward_frees_saved_tensors_as_it_runs();
    // Nothing leaks across the cases: every tensor is gone.
    assert_about("after all cases", live(), 0);
}

fn no_grad_saves_nothing() {
    let x = input();
    let base = live();
    let y = no_grad(|| {
        let mut h = x.clone();
        for _ in 0..DEPTH {
            h = h.sigmoid().unwrap();
        }
        h
    });
    assert!(!y.requires_grad());
    assert_about("no_grad chain", live(), base + S);
    // The same chain with the tape on keeps one saved activation per op.
    let mut h = x.clone();
    for _ in 0..DEPTH {
        h = h.sigmoid().unwrap();
    }
    assert_about("tracked chain", live(), base + S + DEPTH * S);
}

fn ops_whose_derivative_needs_nothing_save_nothing() {
    let x = input();
    let c = Tensor::full(&[N], 2.0, DType::F64, Device::Cpu).unwrap();
    let base = live();
    // affine, neg, add, sub: constant derivatives; mul by an untracked
    // constant needs only the constant (alive anyway), not the activation.
    let mut h = x.clone();
    for _ in 0..DEPTH / 5 {
        h = h.mul_scalar(0.5).unwrap().neg().unwrap().add(&c).unwrap();
        h = h.sub(&c).unwrap().mul(&c).unwrap();
    }
    assert!(h.requires_grad());
    assert_about("constant-derivative chain", live(), base + S);
}

fn backward_frees_saved_tensors_as_it_runs() {
    let x = input();
    let base = live();
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut h = x.clone();
    for _ in 0..DEPTH {
        h = probe(&h.sigmoid().unwrap(), &log);
    }
    let loss = h.sum_all().unwrap();
    drop(h);
    // Each sigmoid saved its input: DEPTH activations (x is the first).
    let before = live();
    assert_about("graph before backward", before, base + (DEPTH - 1) * S);

    reset_peak(Device::Cpu);
    loss.backward().unwrap();
    let peak = stats(Device::Cpu).peak_bytes;
    // Keeping every activation and every gradient would need 2·DEPTH·S;
    // freeing as the pass runs needs the activations plus a few gradients.
    assert!(
        peak <= before + 3 * S,
        "backward peak {:.1} activations above the graph",
        (peak - before) as f64 / S as f64
    );
    // The graph (held by `loss`) no longer holds any saved tensor: only x's
    // gradient was added.
    assert_about("after backward", live(), base + S);

    // Probes ran top-down; each reading is lower than the previous one by
    // the activation the sigmoid above it had saved.
    let readings = log.lock().unwrap().clone();
    assert_eq!(readings.len(), DEPTH);
    for (i, w) in readings.windows(2).enumerate() {
        assert_about(&format!("probe step {i}"), w[0] - w[1], S);
    }
    assert!(readings[0] - readings[DEPTH - 1] >= (DEPTH - 2) * S);
    drop(loss);
    assert_about("graph dropped", live(), base + S);
}
