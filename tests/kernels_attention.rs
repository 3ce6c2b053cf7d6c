//! Attention: the engine op and both kernel paths against PyTorch references
//! (scripts/fixtures_attention.py), flash vs plain on random inputs, f64
//! gradient checks of the op, and its argument validation.

use noisegrad_engine::gradcheck::{GradcheckOptions, gradcheck};
use noisegrad_engine::{DType, Device, Philox, Tensor};
use noisegrad_kernels::attention::cpu::{
    AttnConfig, AttnPath, Qkv, QkvGrads, Tiles, attention_backward, attention_forward,
};
use noisegrad_kernels::cpu::simd::{self, Isa};
use noisegrad_kernels::gemm::cpu::Gemm;
use noisegrad_kernels::gemm::packed::GemmFloat;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/attention.safetensors"
);

/// max |a − b| / max |b|: the error relative to the reference's magnitude.
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    diff / scale.max(1e-30)
}

/// One fixture case: inputs, upstream gradient and the PyTorch results.
struct Case {
    name: String,
    scale: f64,
    t: std::collections::HashMap<&'static str, Tensor>,
}

impl Case {
    fn get(&self, key: &str) -> &Tensor {
        &self.t[key]
    }
    fn config(&self) -> AttnConfig {
        let (q, v) = (self.get("q").shape(), self.get("v").shape());
        AttnConfig {
            batch: q[0],
            q_len: q[1],
            kv_len: v[1],
            qk_dim: q[2],
            v_dim: v[2],
            scale: self.scale,
        }
    }
}

fn load_cases() -> Vec<Case> {
    let file = noisegrad_engine::io::load(FIXTURES, Device::Cpu).expect("attention fixtures");
    let names: Vec<String> = serde_like_list(&file.metadata["cases"]);
    names
        .into_iter()
        .map(|name| {
            let scale = file.metadata[&format!("{name}.scale")].parse().unwrap();
            let t = ["q", "k", "v", "g", "out", "dq", "dk", "dv"]
                .into_iter()
                .map(|key| (key, file.get(&format!("{name}.{key}")).unwrap().clone()))
                .collect();
            Case { name, scale, t }
        })
        .collect()
}

/// Parses the JSON list of strings the fixture script writes (`["a", "b"]`).
fn serde_like_list(s: &str) -> Vec<String> {
    s.trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|x| x.trim().trim_matches('"').to_string())
        .collect()
}

#[test]
fn engine_op_matches_pytorch() {
    for case in load_cases() {
        let [q, k, v] = ["q", "k", "v"].map(|n| case.get(n).set_requires_grad(true));
        let c = case.config();
        // Pass the scale only where it is not the default 1/√C, so the
        // default is exercised too.
        let default = 1.0 / (c.qk_dim as f64).sqrt();
        let scale = ((case.scale - default).abs() > 1e-12).then_some(case.scale);
        let out = q.attention(&k, &v, scale).unwrap();
        out.backward_with(case.get("g")).unwrap();
        let got = [
            out.to_vec_f64(),
            q.grad().unwrap().to_vec_f64(),
            k.grad().unwrap().to_vec_f64(),
            v.grad().unwrap().to_vec_f64(),
        ];
        for (key, got) in ["out", "dq", "dk", "dv"].iter().zip(got) {
            let err = rel_err(&got, &case.get(key).to_vec_f64());
            assert!(err <= 1e-4, "{}: {key} relative error {err:e}", case.name);
        }
    }
}

/// The kernel's outputs: out, lse, dq, dk, dv.
type Results<T> = [Vec<T>; 5];

fn run_kernel<T: Gemm + GemmFloat>(
    c: &AttnConfig,
    path: AttnPath,
    q: &[T],
    k: &[T],
    v: &[T],
    g: &[T],
) -> Results<T> {
    let x = Qkv { q, k, v };
    let mut out = vec![T::ZERO; g.len()];
    let mut lse = vec![T::ZERO; c.batch * c.q_len];
    attention_forward(c, path, x, &mut out, &mut lse);
    let (mut dq, mut dk, mut dv) = (
        vec![T::ZERO; q.len()],
        vec![T::ZERO; k.len()],
        vec![T::ZERO; v.len()],
    );
    let grads = QkvGrads {
        dq: &mut dq,
        dk: &mut dk,
        dv: &mut dv,
    };
    attention_backward(c, path, x, &out, &lse, g, grads);
    [out, lse, dq, dk, dv]
}

/// Every path the kernel has, with tiles small enough to leave ragged edges
/// and to split the keys of the backward across tasks.
fn all_paths() -> Vec<AttnPath> {
    vec![
        AttnPath::Auto,
        AttnPath::Plain,
        AttnPath::Flash(Tiles::DEFAULT),
        AttnPath::Flash(Tiles { rows: 8, cols: 16 }),
        AttnPath::Flash(Tiles { rows: 7, cols: 16 }),
        AttnPath::Flash(Tiles { rows: 5, cols: 32 }),
    ]
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32()
}

fn check_kernel_paths_against_fixtures() {
    for case in load_cases() {
        let c = case.config();
        let [q, k, v, g] = ["q", "k", "v", "g"].map(|n| f32s(case.get(n)));
        for path in all_paths() {
            let [out, _, dq, dk, dv] = run_kernel(&c, path, &q, &k, &v, &g);
            for (key, got) in [("out", out), ("dq", dq), ("dk", dk), ("dv", dv)] {
                let got: Vec<f64> = got.iter().map(|&x| x as f64).collect();
                let err = rel_err(&got, &case.get(key).to_vec_f64());
                assert!(
                    err <= 1e-4,
                    "{} {path:?}: {key} relative error {err:e}",
                    case.name
                );
            }
        }
    }
}

#[test]
fn every_kernel_path_matches_pytorch() {
    check_kernel_paths_against_fixtures();
}

#[test]
fn scalar_fallback_matches_pytorch() {
    simd::with_isa(Isa::Scalar, check_kernel_paths_against_fixtures);
}

fn random(n: usize, rng: &mut Philox) -> Vec<f64> {
    Tensor::randn(&[n], DType::F64, Device::Cpu, rng)
        .unwrap()
        .to_vec_f64()
}

/// Flash (several tilings) and plain agree on random inputs, in f64 to
/// rounding level and in f32 to its precision, on shapes whose sizes are
/// not multiples of the tiles.
#[test]
fn flash_and_plain_agree() {
    let mut rng = Philox::new(7);
    let shapes = [
        (1, 70, 70, 5, 5),
        (3, 35, 35, 12, 12),
        (2, 129, 97, 16, 9),
        (4, 1, 3, 2, 2),
    ];
    for (batch, q_len, kv_len, qk_dim, v_dim) in shapes {
        let c = AttnConfig {
            batch,
            q_len,
            kv_len,
            qk_dim,
            v_dim,
            scale: 1.0 / (qk_dim as f64).sqrt(),
        };
        let q = random(batch * q_len * qk_dim, &mut rng);
        let k = random(batch * kv_len * qk_dim, &mut rng);
        let v = random(batch * kv_len * v_dim, &mut rng);
        let g = random(batch * q_len * v_dim, &mut rng);
        let plain = run_kernel(&c, AttnPath::Plain, &q, &k, &v, &g);
        let f32v = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        let plain32 = run_kernel(
            &c,
            AttnPath::Plain,
            &f32v(&q),
            &f32v(&k),
            &f32v(&v),
            &f32v(&g),
        );
        for path in all_paths() {
            let flash = run_kernel(&c, path, &q, &k, &v, &g);
            let flash32 = run_kernel(&c, path, &f32v(&q), &f32v(&k), &f32v(&v), &f32v(&g));
            for (i, what) in ["out", "lse", "dq", "dk", "dv"].iter().enumerate() {
                let err = rel_err(&flash[i], &plain[i]);
                assert!(err < 1e-12, "{c:?} {path:?} f64 {what}: {err:e}");
                let to64 = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<f64>>();
                let err = rel_err(&to64(&flash32[i]), &to64(&plain32[i]));
                assert!(err < 1e-5, "{c:?} {path:?} f32 {what}: {err:e}");
            }
        }
    }
}

fn randn(shape: &[usize], rng: &mut Philox) -> Tensor {
    Tensor::randn(shape, DType::F64, Device::Cpu, rng).unwrap()
}

#[test]
fn gradcheck_attention() {
    let mut rng = Philox::new(11);
    let opts = GradcheckOptions::default();
    // (q, k, v shapes, scale)
    type Case = ([usize; 3], [usize; 3], [usize; 3], Option<f64>);
    let cases: [Case; 4] = [
        ([2, 5, 3], [2, 5, 3], [2, 5, 3], None),
        ([1, 4, 3], [1, 6, 3], [1, 6, 2], Some(0.7)),
        // More rows and keys than one 64-wide tile: ragged tiles, and the
        // backward splits the keys of the single batch item across tasks.
        ([1, 70, 2], [1, 70, 2], [1, 70, 2], None),
        ([3, 1, 2], [3, 2, 2], [3, 2, 1], None),
    ];
    for (qs, ks, vs, scale) in cases {
        let inputs = [
            randn(&qs, &mut rng),
            randn(&ks, &mut rng),
            randn(&vs, &mut rng),
        ];
        gradcheck(|x| x[0].attention(&x[1], &x[2], scale), &inputs, opts)
            .unwrap_or_else(|e| panic!("q {qs:?} k {ks:?} v {vs:?}: {e}"));
    }
    // Self-attention on one tensor: q = k = v, gradients add up.
    let x = randn(&[2, 6, 3], &mut rng);
    gradcheck(|x| x[0].attention(&x[0], &x[0], None), &[x], opts).unwrap();
}

#[test]
fn strided_inputs_give_the_same_result() {
    let mut rng = Philox::new(3);
    // [B, C, T] maps viewed as [B, T, C], as the U-Net's NCHW → tokens step.
    let [q, k, v] = [0, 1, 2].map(|_| randn(&[2, 6, 10], &mut rng));
    let tokens = |t: &Tensor| t.transpose(1, 2).unwrap();
    let strided = tokens(&q)
        .attention(&tokens(&k), &tokens(&v), None)
        .unwrap();
    let packed = tokens(&q)
        .contiguous()
        .unwrap()
        .attention(
            &tokens(&k).contiguous().unwrap(),
            &tokens(&v).contiguous().unwrap(),
            None,
        )
        .unwrap();
    assert_eq!(strided.to_vec_f64(), packed.to_vec_f64());
}

#[test]
fn empty_batch_is_fine() {
    let z = Tensor::zeros(&[0, 4, 3], DType::F32, Device::Cpu)
        .unwrap()
        .set_requires_grad(true);
    let out = z.attention(&z, &z, None).unwrap();
    assert_eq!(out.shape(), &[0, 4, 3]);
    out.sum_all().unwrap().backward().unwrap();
    assert_eq!(z.grad().unwrap().shape(), &[0, 4, 3]);
}

#[test]
fn bad_arguments_are_errors() {
    let t = |shape: &[usize]| Tensor::zeros(shape, DType::F32, Device::Cpu).unwrap();
    let q = t(&[2, 4, 3]);
    let bad = [
        (t(&[4, 3]), t(&[2, 4, 3]), None, "[batch, tokens, channels]"),
        (
            t(&[2, 4, 5]),
            t(&[2, 4, 3]),
            None,
            "same number of channels",
        ),
        (t(&[2, 4, 3]), t(&[2, 5, 3]), None, "same number of tokens"),
        (t(&[1, 4, 3]), t(&[1, 4, 3]), None, "batch sizes differ"),
        (t(&[2, 0, 3]), t(&[2, 0, 3]), None, "zero keys"),
        (t(&[2, 4, 3]), t(&[2, 4, 0]), None, "at least 1"),
        (t(&[2, 4, 3]), t(&[2, 4, 3]), Some(f64::NAN), "finite"),
    ];
    for (k, v, scale, msg) in bad {
        let err = q.attention(&k, &v, scale).unwrap_err().to_string();
        assert!(err.starts_with("attention") && err.contains(msg), "{err}");
    }
    let k64 = Tensor::zeros(&[2, 4, 3], DType::F64, Device::Cpu).unwrap();
    let err = q.attention(&k64, &k64, None).unwrap_err().to_string();
    assert!(err.contains("dtypes differ"), "{err}");
}
