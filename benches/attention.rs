//! Self-attention at the U-Net's real shapes: tokens = 16×16 = 256
//! positions, batch 8 and 256 channels (the CIFAR-10 model's six attention
//! blocks), and the `small` preset (128 channels, batch 32).
//!
//! - `attention_fwd/<path>/<preset>`: the kernel's forward (out + lse) into
//!   preallocated buffers, for `auto` (what the op runs), `flash` and `plain`;
//! - `attention_fwd_bwd/<path>/<preset>`: forward then backward (dq, dk, dv);
//! - `attention_fwd_bwd/op/<preset>`: the engine op, `q.attention(k, v)` and
//!   `backward_with(g)`, allocations and tape included.
//!
//! `scripts/bench_attention_pytorch.py` times the same in PyTorch (2 threads)
//! and prints the ratio table from criterion's results. Run:
//! `cargo bench --bench attention`.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use noisegrad_engine::{DType, Device, Philox, Tensor};
use noisegrad_kernels::attention::cpu::{
    AttnConfig, AttnPath, Qkv, QkvGrads, Tiles, attention_backward, attention_forward,
};
use std::hint::black_box;
use std::time::Duration;

/// (label, batch, tokens, channels); mirrored in the PyTorch script.
const PRESETS: &[(&str, usize, usize, usize)] = &[("unet", 8, 256, 256), ("small", 32, 256, 128)];

struct Inputs {
    cfg: AttnConfig,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    g: Vec<f32>,
}

impl Inputs {
    fn new(batch: usize, tokens: usize, channels: usize) -> Self {
        let mut rng = Philox::new(1);
        let n = batch * tokens * channels;
        let mut draw = || {
            Tensor::randn(&[n], DType::F32, Device::Cpu, &mut rng)
                .unwrap()
                .to_vec_f32()
        };
        Inputs {
            cfg: AttnConfig {
                batch,
                q_len: tokens,
                kv_len: tokens,
                qk_dim: channels,
                v_dim: channels,
                scale: 1.0 / (channels as f64).sqrt(),
            },
            q: draw(),
            k: draw(),
            v: draw(),
            g: draw(),
        }
    }

    fn qkv(&self) -> Qkv<'_, f32> {
        Qkv {
            q: &self.q,
            k: &self.k,
            v: &self.v,
        }
    }

    fn tensor(&self, data: &[f32]) -> Tensor {
        let c = &self.cfg;
        Tensor::from_f32(data, &[c.batch, c.q_len, c.qk_dim]).unwrap()
    }
}

fn paths() -> [(&'static str, AttnPath); 3] {
    [
        ("auto", AttnPath::Auto),
        ("flash", AttnPath::Flash(Tiles::DEFAULT)),
        ("plain", AttnPath::Plain),
    ]
}

fn bench_attention(c: &mut Criterion) {
    for &(label, batch, tokens, channels) in PRESETS {
        let x = Inputs::new(batch, tokens, channels);
        let cfg = x.cfg;
        let n = x.q.len();
        let mut out = vec![0f32; n];
        let mut lse = vec![0f32; batch * tokens];
        let (mut dq, mut dk, mut dv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);

        let mut fwd = c.benchmark_group("attention_fwd");
        fwd.sample_size(10).measurement_time(Duration::from_secs(4));
        for (name, path) in paths() {
            fwd.bench_function(BenchmarkId::new(name, label), |b| {
                b.iter(|| attention_forward(&cfg, path, x.qkv(), &mut out, &mut lse))
            });
        }
        fwd.finish();

        let mut both = c.benchmark_group("attention_fwd_bwd");
        both.sample_size(10)
            .measurement_time(Duration::from_secs(6));
        for (name, path) in paths() {
            both.bench_function(BenchmarkId::new(name, label), |b| {
                b.iter(|| {
                    attention_forward(&cfg, path, x.qkv(), &mut out, &mut lse);
                    let grads = QkvGrads {
                        dq: &mut dq,
                        dk: &mut dk,
                        dv: &mut dv,
                    };
                    attention_backward(&cfg, path, x.qkv(), &out, &lse, &x.g, grads);
                })
            });
        }
        let [q, k, v] = [&x.q, &x.k, &x.v].map(|d| x.tensor(d).set_requires_grad(true));
        let g = x.tensor(&x.g);
        both.bench_function(BenchmarkId::new("op", label), |b| {
            b.iter(|| {
                let out = q.attention(&k, &v, None).unwrap();
                out.backward_with(&g).unwrap();
                black_box(q.grad());
                for t in [&q, &k, &v] {
                    t.zero_grad();
                }
            })
        });
        both.finish();
    }
}

criterion_group!(benches, bench_attention);
criterion_main!(benches);
