//! Fixture checks shared by `kernels_norm` and `kernels_noise`, which also
//! run them on the scalar fallback and the AVX2 path (`simd::with_isa`). Fixtures come from
//! `scripts/fixtures_norm_noise.py`: f32 inputs, f64 PyTorch references.
#![allow(dead_code)] // each test binary uses a subset

use noisegrad_engine::io::{Loaded, load};
use noisegrad_engine::{DType, Device, QSampleCoef, StepCoef, Tensor};

/// Relative tolerance of the f32 kernels against the f64 references.
pub const TOL_F32: f64 = 1e-4;
/// The f64 kernels see the same inputs, so they agree to rounding.
pub const TOL_F64: f64 = 1e-10;

pub fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => TOL_F32,
        DType::F64 => TOL_F64,
    }
}

pub fn fixture(name: &str) -> Loaded {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");
    load(format!("{dir}{name}"), Device::Cpu).expect("fixture loads")
}

/// A fixture tensor converted to `dtype`.
pub fn get(f: &Loaded, name: &str, dtype: DType) -> Tensor {
    f.get(name).unwrap().to_dtype(dtype).unwrap()
}

/// Asserts max|got − want| ≤ tol · max|want| (a norm-wise relative error,
/// which does not blow up on elements that happen to be near zero).
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let (g, w) = (got.to_vec_f64(), want.to_vec_f64());
    let scale = w.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    let (worst, at) = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold(
            (0f64, 0),
            |(m, i), (j, d)| if d > m { (d, j) } else { (m, i) },
        );
    assert!(
        worst <= tol * scale,
        "{what}: relative error {:.3e} > {tol:e} at element {at} (got {}, want {})",
        worst / scale,
        g[at],
        w[at]
    );
}

fn meta_field(meta: &str, key: &str) -> String {
    meta.split(';')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("fixture metadata {meta:?} lacks {key}"))
        .to_string()
}

/// Every group-norm fixture case, with and without SiLU: output and the
/// gradients of x, γ, β for the stored upstream gradient.
pub fn check_group_norm_fixtures(dtype: DType) {
    let f = fixture("group_norm.safetensors");
    let cases: usize = f.metadata["cases"].parse().unwrap();
    for i in 0..cases {
        let c = format!("c{i}");
        let groups: usize = meta_field(&f.metadata[&c], "groups").parse().unwrap();
        let eps: f64 = meta_field(&f.metadata[&c], "eps").parse().unwrap();
        for silu in [false, true] {
            let x = get(&f, &format!("{c}.x"), dtype).set_requires_grad(true);
            let gamma = get(&f, &format!("{c}.gamma"), dtype).set_requires_grad(true);
            let beta = get(&f, &format!("{c}.beta"), dtype).set_requires_grad(true);
            let y = x.group_norm(groups, &gamma, &beta, eps, silu).unwrap();
            y.backward_with(&get(&f, &format!("{c}.dy"), dtype))
                .unwrap();
            let out = format!("{c}.silu{}", silu as u8);
            let t = tol(dtype);
            let what = |n: &str| {
                format!(
                    "group_norm {c} {:?} G={groups} silu={silu} {dtype}: {n}",
                    x.shape()
                )
            };
            assert_close(&what("y"), &y, f.get(&format!("{out}.y")).unwrap(), t);
            assert_close(
                &what("dx"),
                &x.grad().unwrap(),
                f.get(&format!("{out}.dx")).unwrap(),
                t,
            );
            assert_close(
                &what("dgamma"),
                &gamma.grad().unwrap(),
                f.get(&format!("{out}.dgamma")).unwrap(),
                t,
            );
            assert_close(
                &what("dbeta"),
                &beta.grad().unwrap(),
                f.get(&format!("{out}.dbeta")).unwrap(),
                t,
            );
        }
    }
}

pub fn check_upsample_fixtures(dtype: DType) {
    let f = fixture("upsample.safetensors");
    let cases: usize = f.metadata["cases"].parse().unwrap();
    for i in 0..cases {
        let c = format!("c{i}");
        let x = get(&f, &format!("{c}.x"), dtype).set_requires_grad(true);
        let y = x.upsample_nearest2x().unwrap();
        y.backward_with(&get(&f, &format!("{c}.dy"), dtype))
            .unwrap();
        let what = |n: &str| format!("upsample {c} {:?} {dtype}: {n}", x.shape());
        assert_close(
            &what("y"),
            &y,
            f.get(&format!("{c}.y")).unwrap(),
            tol(dtype),
        );
        assert_close(
            &what("dx"),
            &x.grad().unwrap(),
            f.get(&format!("{c}.dx")).unwrap(),
            tol(dtype),
        );
    }
}

/// The per-sample schedule values stored with the noise fixtures.
pub struct Schedule {
    pub alpha: Vec<f64>,
    pub alpha_bar: Vec<f64>,
    pub sigma: Vec<f64>,
    pub post_c0: Vec<f64>,
    pub post_c1: Vec<f64>,
    pub ddim_alpha_bar_prev: Vec<f64>,
}

impl Schedule {
    pub fn from_fixture(f: &Loaded) -> Self {
        let v = |n: &str| f.get(n).unwrap().to_vec_f64();
        Schedule {
            alpha: v("alpha"),
            alpha_bar: v("alpha_bar"),
            sigma: v("sigma"),
            post_c0: v("post_c0"),
            post_c1: v("post_c1"),
            ddim_alpha_bar_prev: v("ddim_alpha_bar_prev"),
        }
    }

    pub fn q_sample(&self) -> Vec<QSampleCoef> {
        self.alpha_bar
            .iter()
            .map(|&ab| QSampleCoef::from_alpha_bar(ab))
            .collect()
    }

    pub fn ddpm(&self) -> Vec<StepCoef> {
        (0..self.alpha.len())
            .map(|n| StepCoef::ddpm(self.alpha[n], self.alpha_bar[n], self.sigma[n]))
            .collect()
    }

    pub fn ddpm_clipped(&self) -> Vec<StepCoef> {
        (0..self.alpha.len())
            .map(|n| {
                StepCoef::ddpm_clipped(
                    self.alpha_bar[n],
                    self.post_c0[n],
                    self.post_c1[n],
                    self.sigma[n],
                )
            })
            .collect()
    }

    pub fn ddim(&self, eta: f64, clip: bool) -> Vec<StepCoef> {
        (0..self.alpha.len())
            .map(|n| StepCoef::ddim(self.alpha_bar[n], self.ddim_alpha_bar_prev[n], eta, clip))
            .collect()
    }
}

/// q_sample, L_simple (value and gradient) and every reverse-step variant.
pub fn check_noise_fixtures(dtype: DType) {
    let f = fixture("noise_ops.safetensors");
    let s = Schedule::from_fixture(&f);
    let t = tol(dtype);
    let (x0, eps, eps_pred, x_t, z) = (
        get(&f, "x0", dtype),
        get(&f, "eps", dtype),
        get(&f, "eps_pred", dtype),
        get(&f, "x_t", dtype),
        get(&f, "z", dtype),
    );
    let want = |n: &str| f.get(n).unwrap().clone();
    assert_close(
        &format!("q_sample {dtype}"),
        &x0.q_sample(&eps, &s.q_sample()).unwrap(),
        &want("q_sample"),
        t,
    );

    let pred = eps_pred.set_requires_grad(true);
    let loss = pred.l_simple_loss(&eps).unwrap();
    assert_eq!(loss.shape(), &[] as &[usize]);
    assert_close(&format!("l_simple {dtype}"), &loss, &want("l_simple"), t);
    loss.backward().unwrap();
    assert_close(
        &format!("l_simple grad {dtype}"),
        &pred.grad().unwrap(),
        &want("l_simple_grad"),
        t,
    );

    let step = |coefs: &[StepCoef], noise: bool| {
        x_t.denoise_step(&eps_pred, noise.then_some(&z), coefs)
            .unwrap()
    };
    let cases: [(&str, Vec<StepCoef>); 6] = [
        ("ddpm", s.ddpm()),
        ("ddpm_clipped", s.ddpm_clipped()),
        ("ddim_eta0_clip", s.ddim(0.0, true)),
        ("ddim_eta0", s.ddim(0.0, false)),
        ("ddim_eta1", s.ddim(1.0, false)),
        ("ddim_eta05_clip", s.ddim(0.5, true)),
    ];
    for (name, coefs) in cases {
        assert_close(
            &format!("{name} {dtype}"),
            &step(&coefs, true),
            &want(name),
            t,
        );
    }
}
