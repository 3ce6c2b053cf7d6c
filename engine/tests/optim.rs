//! Adam/AdamW, gradient clipping, EMA and the warmup schedule, against
//! hand-written f64 formulas and against PyTorch (fixture written by
//! scripts/make_adam_reference.py).

use noisegrad_engine::io::{Loaded, load, save};
use noisegrad_engine::nn::{Init, Linear, ParamStore};
use noisegrad_engine::optim::{
    Adam, AdamConfig, Ema, WarmupSchedule, WeightDecay, clip_coefficient, clip_grad_norm, grad_norm,
};
use noisegrad_engine::testing::assert_close;
use noisegrad_engine::{DType, Device, Philox, Tensor};
use std::collections::HashMap;

type Named = Vec<(String, Tensor)>;

const ADAM_REFERENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/adam_reference.safetensors"
);

fn f64_tensor(v: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape, DType::F64, Device::Cpu).unwrap()
}

/// Adam in plain f64, one scalar at a time: the formulas of Kingma & Ba
/// with torch's L2 / decoupled weight decay.
struct RefAdam {
    p: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
    cfg: AdamConfig,
}

impl RefAdam {
    fn step(&mut self, grad: &[f64], scale: f64) {
        let c = self.cfg;
        self.t += 1;
        let (bias1, bias2) = (1.0 - c.beta1.powi(self.t), 1.0 - c.beta2.powi(self.t));
        let each = self
            .p
            .iter_mut()
            .zip(&mut self.m)
            .zip(&mut self.v)
            .zip(grad);
        for (((p, m), v), &g) in each {
            let mut g = g * scale;
            match c.weight_decay {
                WeightDecay::None => {}
                WeightDecay::L2(l) => g += l * *p,
                WeightDecay::Decoupled(l) => *p -= c.lr * l * *p,
            }
            *m = c.beta1 * *m + (1.0 - c.beta1) * g;
            *v = c.beta2 * *v + (1.0 - c.beta2) * g * g;
            let (mhat, vhat) = (*m / bias1, *v / bias2);
            *p -= c.lr * mhat / (vhat.sqrt() + c.eps);
        }
    }
}

#[test]
fn adam_variants_match_hand_computed_f64_reference() {
    let p0 = [0.5, -1.5, 2.0, 0.0, 3.0, -0.25];
    let grads = [
        [0.1, -0.2, 0.3, 1.0, -2.0, 0.05],
        [-0.3, 0.1, 0.0, 2.0, 1.0, -0.5],
        [0.2, 0.2, -0.1, -1.0, 0.5, 0.0],
        [1.0, -1.0, 0.5, 0.1, -0.1, 0.3],
    ];
    let configs = [
        AdamConfig::adam(0.1),
        AdamConfig {
            weight_decay: WeightDecay::L2(0.3),
            ..AdamConfig::adam(0.05)
        },
        AdamConfig::adamw(0.1, 0.2),
        AdamConfig {
            beta1: 0.5,
            beta2: 0.9,
            eps: 1e-3,
            ..AdamConfig::adamw(0.02, 0.5)
        },
    ];
    for cfg in configs {
        let s = ParamStore::new(DType::F64, Device::Cpu, 0);
        let w = s.root().param("w", &[2, 3], Init::Zeros).unwrap();
        s.load_state_dict(&[("w".into(), f64_tensor(&p0, &[2, 3]))])
            .unwrap();
        let mut opt = Adam::new(s.params(), cfg).unwrap();
        let mut reference = RefAdam {
            p: p0.to_vec(),
            m: vec![0.0; 6],
            v: vec![0.0; 6],
            t: 0,
            cfg,
        };
        for (k, g) in grads.iter().enumerate() {
            w.set_grad(Some(f64_tensor(g, &[2, 3])));
            // Alternate plain steps and steps with a folded-in gradient scale.
            let scale = if k % 2 == 0 { 1.0 } else { 0.25 };
            if scale == 1.0 {
                opt.step()
            } else {
                opt.step_scaled(scale)
            }
            .unwrap();
            reference.step(g, scale);
            assert_close(
                &format!("{cfg:?} step {k}"),
                &w.to_vec_f64(),
                &reference.p,
                1e-13,
                1e-14,
            );
        }
        let st: HashMap<String, Tensor> = opt.state_dict().unwrap().into_iter().collect();
        assert_close("m", &st["opt.m.w"].to_vec_f64(), &reference.m, 1e-13, 1e-15);
        assert_close("v", &st["opt.v.w"].to_vec_f64(), &reference.v, 1e-13, 1e-15);
        assert_eq!(st["opt.step.w"].item().unwrap(), 4.0);
    }
}

/// Runs `cfg` on the fixture's problem (p, q with fixed gradients); with
/// `max_norm`, every step is `step_clipped`. Returns (store, optimizer, norms).
fn run_fixture_problem(
    r: &Loaded,
    cfg: AdamConfig,
    max_norm: Option<f64>,
) -> (ParamStore, Adam, Vec<f64>) {
    let s = ParamStore::new(DType::F32, Device::Cpu, 0);
    let p = s.root().param("p", &[3, 4], Init::Zeros).unwrap();
    let q = s.root().param("q", &[5], Init::Zeros).unwrap();
    s.load_state_dict(&[
        ("p".into(), r.get("p0").unwrap().clone()),
        ("q".into(), r.get("q0").unwrap().clone()),
    ])
    .unwrap();
    let mut opt = Adam::new(s.params(), cfg).unwrap();
    let (gp, gq) = (r.get("gp").unwrap(), r.get("gq").unwrap());
    let mut norms = Vec::new();
    for t in 0..gp.shape()[0] {
        p.set_grad(Some(gp.narrow(0, t, 1).unwrap().squeeze(0).unwrap()));
        q.set_grad(Some(gq.narrow(0, t, 1).unwrap().squeeze(0).unwrap()));
        match max_norm {
            Some(max) => norms.push(opt.step_clipped(max).unwrap()),
            None => opt.step().unwrap(),
        }
    }
    (s, opt, norms)
}

#[test]
fn adam_and_adamw_match_pytorch() {
    let r = load(ADAM_REFERENCE, Device::Cpu).unwrap();
    let num = |k: &str| r.metadata[k].parse::<f64>().unwrap();
    let (lr, decay, max_norm) = (num("lr"), num("weight_decay"), num("max_norm"));
    let cases = [
        ("adam", AdamConfig::adam(lr), None),
        (
            "adam_l2",
            AdamConfig {
                weight_decay: WeightDecay::L2(decay),
                ..AdamConfig::adam(lr)
            },
            None,
        ),
        ("adamw", AdamConfig::adamw(lr, decay), None),
        ("adam_clip", AdamConfig::adam(lr), Some(max_norm)),
    ];
    for (name, cfg, clip) in cases {
        let (s, opt, norms) = run_fixture_problem(&r, cfg, clip);
        let state: HashMap<String, Tensor> = opt.state_dict().unwrap().into_iter().collect();
        for pn in ["p", "q"] {
            let want = |k: String| r.get(&k).unwrap().to_vec_f64();
            // f32 arithmetic in a different operation order: a few ulps.
            assert_close(
                &format!("{name}.{pn}"),
                &s.get(pn).unwrap().to_vec_f64(),
                &want(format!("{name}.{pn}")),
                2e-6,
                1e-7,
            );
            assert_close(
                &format!("{name}.m.{pn}"),
                &state[&format!("opt.m.{pn}")].to_vec_f64(),
                &want(format!("{name}.m.{pn}")),
                1e-5,
                1e-8,
            );
            assert_close(
                &format!("{name}.v.{pn}"),
                &state[&format!("opt.v.{pn}")].to_vec_f64(),
                &want(format!("{name}.v.{pn}")),
                1e-5,
                1e-10,
            );
        }
        if clip.is_some() {
            // torch sums squares in f32, noisegrad in f64.
            let want = r.get("adam_clip.norms").unwrap().to_vec_f64();
            assert_close("adam_clip.norms", &norms, &want, 1e-6, 0.0);
        }
    }
}

#[test]
fn clip_grad_norm_matches_pytorch() {
    let r = load(ADAM_REFERENCE, Device::Cpu).unwrap();
    let s = ParamStore::new(DType::F32, Device::Cpu, 0);
    let p = s.root().param("p", &[3, 4], Init::Zeros).unwrap();
    let q = s.root().param("q", &[5], Init::Zeros).unwrap();
    let unused = s.root().param("unused", &[2], Init::Zeros).unwrap();
    let step3 = |name: &str| {
        r.get(name)
            .unwrap()
            .narrow(0, 3, 1)
            .unwrap()
            .squeeze(0)
            .unwrap()
    };
    p.set_grad(Some(step3("gp")));
    q.set_grad(Some(step3("gq")));
    let params = s.tensors();
    let before = grad_norm(&params).unwrap();
    let norm = clip_grad_norm(&params, 0.5).unwrap();
    assert_eq!(norm, before);
    assert_close(
        "norm",
        &[norm],
        &r.get("clip.norm").unwrap().to_vec_f64(),
        1e-6,
        0.0,
    );
    assert_close(
        "gp",
        &p.grad().unwrap().to_vec_f64(),
        &r.get("clip.gp").unwrap().to_vec_f64(),
        1e-6,
        1e-9,
    );
    assert_close(
        "gq",
        &q.grad().unwrap().to_vec_f64(),
        &r.get("clip.gq").unwrap().to_vec_f64(),
        1e-6,
        1e-9,
    );
    assert!(unused.grad().is_none());
    // Now below the limit: clipping leaves the gradients alone. (Clipping
    // to 0.5 again would still scale by 0.5/(0.5 + 1e-6), as torch does.)
    let g = p.grad().unwrap().to_vec_f64();
    let again = clip_grad_norm(&params, 1.0).unwrap();
    assert!((again - 0.5).abs() < 1e-6, "{again}");
    assert_eq!(p.grad().unwrap().to_vec_f64(), g);
    assert!(clip_grad_norm(&params, 0.0).is_err());
}

#[test]
fn clip_coefficient_is_torchs() {
    assert_eq!(clip_coefficient(0.5, 1.0), 1.0);
    assert_eq!(clip_coefficient(3.0, 1.0), 1.0 / (3.0 + 1e-6));
    assert_eq!(clip_coefficient(f64::NAN, 1.0), 1.0);
}

#[test]
fn step_skips_params_without_grad_and_updates_every_handle() {
    let s = ParamStore::new(DType::F32, Device::Cpu, 0);
    let a = s.root().param("a", &[3], Init::Ones).unwrap();
    let b = s.root().param("b", &[2], Init::Ones).unwrap();
    let a_clone = a.clone();
    let a_view = a.detach();
    let mut opt = Adam::new(s.params(), AdamConfig::adam(0.1)).unwrap();
    a.set_grad(Some(Tensor::from_f32(&[1.0, -1.0, 0.0], &[3]).unwrap()));
    opt.step().unwrap();
    let want = [0.9, 1.1, 1.0];
    assert_close("a", &a.to_vec_f64(), &want, 1e-6, 0.0);
    assert_eq!(a_clone.to_vec_f64(), a.to_vec_f64());
    assert_eq!(a_view.to_vec_f64(), a.to_vec_f64());
    assert_eq!(b.to_vec_f64(), [1.0, 1.0]);
    let names: Vec<String> = opt
        .state_dict()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["opt.m.a", "opt.v.a", "opt.step.a"]);
    opt.zero_grad();
    assert!(a.grad().is_none());
    opt.step().unwrap(); // nothing has a gradient: nothing moves
    assert_close("a", &a.to_vec_f64(), &want, 1e-6, 0.0);
}

/// A small regression problem: Linear(4→16)-SiLU-Linear(16→1) on a fixed batch.
struct Mlp {
    l1: Linear,
    l2: Linear,
}

impl Mlp {
    fn new(s: &ParamStore, hidden: usize) -> Self {
        Self {
            l1: Linear::new(&s.sub("l1"), 4, hidden).unwrap(),
            l2: Linear::new(&s.sub("l2"), hidden, 1).unwrap(),
        }
    }
    fn loss(&self, x: &Tensor, y: &Tensor) -> Tensor {
        let h = self.l1.forward(x).unwrap().silu().unwrap();
        self.l2.forward(&h).unwrap().mse_loss(y).unwrap()
    }
}

fn regression_batch(n: usize) -> (Tensor, Tensor) {
    let x = Tensor::randn(&[n, 4], DType::F32, Device::Cpu, &mut Philox::new(99)).unwrap();
    // y = sin(x0) + x1·x2 − 0.5·x3: smooth, nonlinear.
    let xs = x.to_vec_f64();
    let y: Vec<f64> = xs
        .chunks(4)
        .map(|r| r[0].sin() + r[1] * r[2] - 0.5 * r[3])
        .collect();
    (
        x,
        Tensor::from_vec(&y, &[n, 1], DType::F32, Device::Cpu).unwrap(),
    )
}

fn train_steps(mlp: &Mlp, opt: &mut Adam, x: &Tensor, y: &Tensor, steps: usize) -> f64 {
    let mut loss = f64::NAN;
    for _ in 0..steps {
        opt.zero_grad();
        let l = mlp.loss(x, y);
        loss = l.item().unwrap();
        l.backward().unwrap();
        opt.step_clipped(10.0).unwrap();
    }
    loss
}

#[test]
fn mlp_trained_with_adam_fits_a_fixed_batch() {
    let s = ParamStore::new(DType::F32, Device::Cpu, 7);
    let mlp = Mlp::new(&s, 32);
    let (x, y) = regression_batch(64);
    let initial = mlp.loss(&x, &y).item().unwrap();
    let mut opt = Adam::new(s.params(), AdamConfig::adam(1e-2)).unwrap();
    let last = train_steps(&mlp, &mut opt, &x, &y, 1000);
    let fin = mlp.loss(&x, &y).item().unwrap();
    println!("loss {initial} → {last} → {fin}");
    assert!(initial > 0.5, "{initial}");
    assert!(fin < 1e-3 * initial, "loss only went {initial} → {fin}");
}

#[test]
fn resuming_from_a_checkpoint_is_exact() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("optim-resume");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ckpt.safetensors");
    let (x, y) = regression_batch(16);
    let cfg = AdamConfig::adamw(5e-3, 0.01);

    let s = ParamStore::new(DType::F32, Device::Cpu, 3);
    let mlp = Mlp::new(&s, 8);
    let mut opt = Adam::new(s.params(), cfg).unwrap();
    train_steps(&mlp, &mut opt, &x, &y, 3);
    let mut ckpt = s.state_dict();
    ckpt.extend(opt.state_dict().unwrap());
    save(&path, &ckpt, &HashMap::new()).unwrap();
    train_steps(&mlp, &mut opt, &x, &y, 4);

    // A fresh model (different seed) and optimizer, restored from the file.
    let s2 = ParamStore::new(DType::F32, Device::Cpu, 1234);
    let mlp2 = Mlp::new(&s2, 8);
    let mut opt2 = Adam::new(s2.params(), cfg).unwrap();
    let loaded = load(&path, Device::Cpu).unwrap().tensors;
    let (opt_part, model_part): (Vec<_>, Vec<_>) =
        loaded.into_iter().partition(|(n, _)| n.starts_with("opt."));
    s2.load_state_dict(&model_part).unwrap();
    opt2.load_state_dict(&opt_part).unwrap();
    train_steps(&mlp2, &mut opt2, &x, &y, 4);

    for ((name, a), (_, b)) in s.params().iter().zip(s2.params().iter()) {
        assert_eq!(
            a.to_vec_f64(),
            b.to_vec_f64(),
            "{name} differs after resuming"
        );
    }
}

#[test]
fn bad_optimizer_state_is_rejected_with_names() {
    let s = ParamStore::new(DType::F32, Device::Cpu, 0);
    let w = s.root().param("w", &[2, 2], Init::Ones).unwrap();
    let mut opt = Adam::new(s.params(), AdamConfig::adam(0.1)).unwrap();
    w.set_grad(Some(w.ones_like().unwrap()));
    opt.step().unwrap();
    let good = opt.state_dict().unwrap();
    let with = |f: &dyn Fn(&mut Named)| {
        let mut sd: Vec<(String, Tensor)> = good
            .iter()
            .map(|(n, t)| (n.clone(), t.mul_scalar(1.0).unwrap()))
            .collect();
        f(&mut sd);
        sd
    };
    let cases: Vec<(Named, &str)> = vec![
        (
            with(&|sd| sd[0].1 = Tensor::zeros(&[4], DType::F32, Device::Cpu).unwrap()),
            "'opt.m.w' has shape [4] in the input but [2, 2]",
        ),
        (
            with(&|sd| {
                sd.remove(2);
            }),
            "no 'opt.step.w'",
        ),
        (
            with(&|sd| {
                sd.remove(1);
            }),
            "missing 1: 'opt.v.w'",
        ),
        (with(&|sd| sd[0].0 = "opt.m.nope".into()), "'opt.m.nope'"),
        (
            with(&|sd| sd.push(("opt.step.nope".into(), sd[2].1.clone()))),
            "opt.step.nope",
        ),
        (
            with(&|sd| sd.push(("opt.lr".into(), sd[2].1.clone()))),
            "opt.lr",
        ),
        (
            with(&|sd| sd[2].1 = Tensor::scalar(1.5, DType::F64, Device::Cpu).unwrap()),
            "not an update count",
        ),
    ];
    let before = opt.state_dict().unwrap()[0].1.to_vec_f64();
    for (sd, want) in cases {
        let err = opt.load_state_dict(&sd).unwrap_err().to_string();
        assert!(err.contains(want), "expected «{want}» in: {err}");
    }
    assert_eq!(opt.state_dict().unwrap()[0].1.to_vec_f64(), before);
}

#[test]
fn bad_optimizer_arguments_are_errors() {
    let s = ParamStore::new(DType::F32, Device::Cpu, 0);
    let w = s.root().param("w", &[2, 2], Init::Ones).unwrap();
    let view = vec![("row".to_string(), w.narrow(0, 1, 1).unwrap())];
    assert!(
        Adam::new(view.clone(), AdamConfig::adam(0.1))
            .unwrap_err()
            .to_string()
            .contains("'row' is a view")
    );
    assert!(
        Ema::new(view, 0.9)
            .unwrap_err()
            .to_string()
            .contains("'row' is a view")
    );
    let twice = vec![("w".to_string(), w.clone()), ("w".to_string(), w.clone())];
    assert!(Adam::new(twice, AdamConfig::adam(0.1)).is_err());
    let bad = AdamConfig {
        beta1: 1.0,
        ..AdamConfig::adam(0.1)
    };
    assert!(Adam::new(s.params(), bad).is_err());
    let mut opt = Adam::new(s.params(), AdamConfig::adam(0.1)).unwrap();
    assert!(opt.step_scaled(f64::NAN).is_err());
    w.set_grad(Some(Tensor::zeros(&[4], DType::F32, Device::Cpu).unwrap()));
    assert!(
        opt.step()
            .unwrap_err()
            .to_string()
            .contains("gradient of 'w'")
    );
    assert!(Ema::new(s.params(), 1.5).is_err());
}

#[test]
fn ema_follows_the_recurrence_and_swaps() {
    let s = ParamStore::new(DType::F64, Device::Cpu, 0);
    let w = s.root().param("w", &[3], Init::Zeros).unwrap();
    let set = |v: &[f64]| {
        s.load_state_dict(&[("w".into(), f64_tensor(v, &[3]))])
            .unwrap()
    };
    set(&[1.0, 2.0, 3.0]);
    let d = 0.9;
    let mut ema = Ema::new(s.params(), d).unwrap();
    assert_eq!(Ema::DEFAULT_DECAY, 0.9999);
    // θ̄ starts at θ; then θ̄ ← d·θ̄ + (1 − d)·θ.
    let mut shadow = vec![1.0, 2.0, 3.0];
    for target in [[0.0, 0.0, 0.0], [10.0, -10.0, 1.0], [4.0, 4.0, 4.0]] {
        set(&target);
        ema.update().unwrap();
        for (e, t) in shadow.iter_mut().zip(target) {
            *e = d * *e + (1.0 - d) * t;
        }
        let got = ema.state_dict()[0].1.to_vec_f64();
        assert_close("ema", &got, &shadow, 1e-15, 1e-15);
    }
    let handle = w.clone();
    ema.swap().unwrap();
    assert_close("swapped in", &handle.to_vec_f64(), &shadow, 1e-15, 1e-15);
    assert_eq!(ema.state_dict()[0].1.to_vec_f64(), [4.0, 4.0, 4.0]);
    ema.swap().unwrap();
    assert_eq!(handle.to_vec_f64(), [4.0, 4.0, 4.0]);
    ema.copy_to_params().unwrap();
    assert_close("copied", &handle.to_vec_f64(), &shadow, 1e-15, 1e-15);
    assert!(handle.requires_grad());
}

#[test]
fn ema_state_round_trips() {
    let s = ParamStore::new(DType::F32, Device::Cpu, 0);
    s.sub("a").param("w", &[2], Init::Ones).unwrap();
    let mut ema = Ema::new(s.params(), 0.5).unwrap();
    let saved = vec![(
        "ema.a.w".to_string(),
        Tensor::from_f32(&[3.0, 4.0], &[2]).unwrap(),
    )];
    ema.load_state_dict(&saved).unwrap();
    assert_eq!(ema.state_dict()[0].0, "ema.a.w");
    assert_eq!(ema.state_dict()[0].1.to_vec_f64(), [3.0, 4.0]);
    ema.update().unwrap(); // 0.5·[3, 4] + 0.5·[1, 1]
    assert_eq!(ema.state_dict()[0].1.to_vec_f64(), [2.0, 2.5]);
    let err = ema.load_state_dict(&[]).unwrap_err().to_string();
    assert!(err.contains("missing 1: 'ema.a.w'"), "{err}");
}

#[test]
fn warmup_schedule_values() {
    let s = WarmupSchedule::new(2e-4, 5000);
    assert_eq!(s.lr(0), 0.0);
    assert_eq!(s.lr(1), 2e-4 / 5000.0);
    assert_eq!(s.lr(2500), 1e-4);
    assert_eq!(s.lr(5000), 2e-4);
    assert_eq!(s.lr(1_000_000), 2e-4);
    assert_eq!(WarmupSchedule::new(1e-3, 0).lr(0), 1e-3);
}
