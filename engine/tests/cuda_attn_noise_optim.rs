//! CUDA against CPU for attention, the fused noise-schedule ops and the
//! optimizer updates (see `noisegrad_engine::testing`). Without a GPU
//! they run on the CUDA emulator (or skip where it cannot run).
//!
//! TF32 stays off in this binary (nothing here turns it on), so the
//! attention GEMMs run in plain f32 and the f32 tolerance applies.

use noisegrad_engine::optim::{Adam, AdamConfig, Ema, WeightDecay, clip_grad_norm, grad_norm};
use noisegrad_engine::testing::randn_f32 as randn;
use noisegrad_engine::testing::{compare_devices, gpu_or_skip, scaled_error};
use noisegrad_engine::{DType, Device, QSampleCoef, Result, StepCoef, Tensor, no_grad};

const TOL: f64 = 1e-5;

// ---- attention ------------------------------------------------------------

/// The U-Net's call: q, k, v are `[B, T, C]` token views (transposed) of
/// `[B, C, T]` maps, read by cuBLAS in place.
#[test]
fn attention_matches_cpu_at_the_unet_shape() {
    let Some(gpu) = gpu_or_skip("attention_matches_cpu_at_the_unet_shape") else {
        return;
    };
    let (b, c, t) = (2, 256, 256);
    let inputs = [
        randn(&[b, c, t], 1),
        randn(&[b, c, t], 2),
        randn(&[b, c, t], 3),
    ];
    let f = |x: &[Tensor]| -> Result<Tensor> {
        let tok = |i: usize| x[i].transpose(1, 2);
        tok(0)?.attention(&tok(1)?, &tok(2)?, None)
    };
    let r = compare_devices("attention unet", f, &inputs, &[true; 3], gpu, TOL).unwrap();
    println!("attention unet: {r:?}");
}

/// Odd sizes (nothing a multiple of 32: M = N = 64 + 7, then M ≠ N and
/// C ≠ E), an explicit scale, and one operand of each kind: q padded rows
/// (a narrow: not contiguous), k transposed, v a view with no unit stride
/// (packed before the GEMMs).
#[test]
fn attention_matches_cpu_at_odd_shapes_and_layouts() {
    let Some(gpu) = gpu_or_skip("attention_matches_cpu_at_odd_shapes_and_layouts") else {
        return;
    };
    for (b, m, n, c, e) in [(3, 71, 71, 32, 32), (3, 71, 50, 32, 24)] {
        let inputs = [
            randn(&[b, m, c + 5], 4),
            randn(&[b, c, n], 5),
            randn(&[n, e, b], 6),
        ];
        let f = |x: &[Tensor]| -> Result<Tensor> {
            let q = x[0].narrow(2, 3, c)?;
            let k = x[1].transpose(1, 2)?;
            let v = x[2].permute(&[2, 0, 1])?;
            q.attention(&k, &v, Some(0.3))?.mul_scalar(2.0)
        };
        let name = format!("attention {b}x{m}x{n}x{c}x{e}");
        let r = compare_devices(&name, f, &inputs, &[true; 3], gpu, TOL).unwrap();
        println!("{name}: {r:?}");
    }
    // Self-attention through one buffer (q = k = v), as gradcheck does.
    let x = [randn(&[3, 71, 32], 7)];
    let f = |x: &[Tensor]| x[0].attention(&x[0], &x[0], None);
    compare_devices("attention self", f, &x, &[true], gpu, TOL).unwrap();
}

/// Many small items, then one long item: the row indexing over more rows
/// and blocks. (A batch big enough for several scratch chunks would take
/// too long on the CPU side; the kernels crate's host run of the attention
/// plan checks the chunking.)
#[test]
fn attention_matches_cpu_with_many_rows() {
    let Some(gpu) = gpu_or_skip("attention_matches_cpu_with_many_rows") else {
        return;
    };
    let inputs = [
        randn(&[64, 16, 8], 8),
        randn(&[64, 40, 8], 9),
        randn(&[64, 40, 8], 10),
    ];
    let f = |x: &[Tensor]| x[0].attention(&x[1], &x[2], None);
    compare_devices("attention many items", f, &inputs, &[true; 3], gpu, TOL).unwrap();
    let inputs = [
        randn(&[1, 1000, 16], 11),
        randn(&[1, 300, 16], 12),
        randn(&[1, 300, 16], 13),
    ];
    compare_devices("attention long", f, &inputs, &[true; 3], gpu, TOL).unwrap();
}

// ---- noise-schedule ops ---------------------------------------------------

fn q_coefs(n: usize) -> Vec<QSampleCoef> {
    (0..n)
        .map(|i| QSampleCoef::from_alpha_bar(0.05 + 0.9 * i as f64 / n as f64))
        .collect()
}

#[test]
fn q_sample_matches_cpu() {
    let Some(gpu) = gpu_or_skip("q_sample_matches_cpu") else {
        return;
    };
    let coefs = q_coefs(4);
    let inputs = [randn(&[4, 3, 8, 8], 20), randn(&[4, 3, 8, 8], 21)];
    let f = |x: &[Tensor]| x[0].q_sample(&x[1], &coefs);
    compare_devices("q_sample", f, &inputs, &[true, true], gpu, TOL).unwrap();
    // A non-contiguous x_0 (packed before the kernel).
    let inputs = [randn(&[4, 3, 5, 6], 22), randn(&[4, 3, 6, 5], 23)];
    let f = |x: &[Tensor]| x[0].transpose(2, 3)?.q_sample(&x[1], &coefs);
    compare_devices("q_sample strided", f, &inputs, &[true, true], gpu, TOL).unwrap();
}

#[test]
fn l_simple_matches_cpu() {
    let Some(gpu) = gpu_or_skip("l_simple_matches_cpu") else {
        return;
    };
    // Large enough for many reduction blocks; the loss stays on the device.
    let inputs = [randn(&[8, 3, 32, 32], 24), randn(&[8, 3, 32, 32], 25)];
    let f = |x: &[Tensor]| x[0].l_simple_loss(&x[1]);
    compare_devices("l_simple", f, &inputs, &[true, true], gpu, TOL).unwrap();
    let loss = inputs[0]
        .to_device(gpu)
        .unwrap()
        .l_simple_loss(&inputs[1].to_device(gpu).unwrap())
        .unwrap();
    assert_eq!(loss.device(), gpu);
    assert_eq!(loss.shape(), &[] as &[usize]);
    // Upstream gradient ≠ 1 (multiplied in on the device), and a strided eps.
    let f = |x: &[Tensor]| {
        x[0].l_simple_loss(&x[1].transpose(2, 3)?)?
            .mul_scalar(-2.5)?
            .exp()
    };
    let inputs = [randn(&[2, 3, 5, 7], 26), randn(&[2, 3, 7, 5], 27)];
    compare_devices("l_simple scaled", f, &inputs, &[true, true], gpu, TOL).unwrap();
}

#[test]
fn denoise_step_matches_cpu() {
    let Some(gpu) = gpu_or_skip("denoise_step_matches_cpu") else {
        return;
    };
    let n = 3;
    let variants: [(&str, Vec<StepCoef>); 4] = [
        (
            "ddpm",
            (0..n)
                .map(|i| StepCoef::ddpm(0.98 - 0.01 * i as f64, 0.4, 0.1))
                .collect(),
        ),
        (
            "ddpm clipped",
            (0..n)
                .map(|i| StepCoef::ddpm_clipped(0.3 + 0.2 * i as f64, 0.3, 0.6, 0.05))
                .collect(),
        ),
        (
            "ddim",
            (0..n)
                .map(|i| StepCoef::ddim(0.5, 0.6 + 0.1 * i as f64, 0.0, false))
                .collect(),
        ),
        (
            "ddim clipped",
            (0..n)
                .map(|_| StepCoef::ddim(0.2, 0.5, 1.0, true))
                .collect(),
        ),
    ];
    // x_t scaled up so the x̂_0 clamp is active for many elements.
    let inputs = [
        randn(&[n, 3, 9, 9], 30).mul_scalar(3.0).unwrap(),
        randn(&[n, 3, 9, 9], 31),
        randn(&[n, 3, 9, 9], 32),
    ];
    for (name, coefs) in &variants {
        let with_z = |x: &[Tensor]| no_grad(|| x[0].denoise_step(&x[1], Some(&x[2]), coefs));
        compare_devices(name, with_z, &inputs, &[false; 3], gpu, TOL).unwrap();
        let without = |x: &[Tensor]| no_grad(|| x[0].denoise_step(&x[1], None, coefs));
        compare_devices(name, without, &inputs, &[false; 3], gpu, TOL).unwrap();
    }
}

// ---- optimizer ------------------------------------------------------------

const SHAPES: [&[usize]; 3] = [&[64, 33], &[7], &[3, 5, 2]];

fn initial_param(i: usize) -> Tensor {
    randn(SHAPES[i], 100 + i as u64)
}

/// The same parameters on `device` (copies of fixed CPU values), as leaves
/// that hold a gradient.
fn params_on(device: Device) -> Vec<(String, Tensor)> {
    (0..SHAPES.len())
        .map(|i| {
            let p = initial_param(i).to_device(device).unwrap();
            (format!("p{i}"), p.set_requires_grad(true))
        })
        .collect()
}

/// Guards against a vacuous comparison: the updates moved every parameter.
fn assert_moved(what: &str, params: &[(String, Tensor)]) {
    for (i, (name, p)) in params.iter().enumerate() {
        let err = scaled_error(&p.to_vec_f64(), &initial_param(i).to_vec_f64());
        assert!(err > 1e-4, "{what}: {name} did not change");
    }
}

/// Gives every parameter the gradient of step `t` (times `size`).
fn set_grads(params: &[(String, Tensor)], t: u64, size: f64) {
    for (i, (_, p)) in params.iter().enumerate() {
        let g = randn(p.shape(), 1000 * t + i as u64)
            .mul_scalar(size)
            .unwrap()
            .to_device(p.device())
            .unwrap();
        p.set_grad(Some(g));
    }
}

fn assert_same_values(what: &str, gpu: &Tensor, cpu: &Tensor) {
    let err = scaled_error(&gpu.to_vec_f64(), &cpu.to_vec_f64());
    assert!(err <= TOL, "{what}: CUDA and CPU differ by {err:.3e}");
}

fn assert_same_params(what: &str, gpu: &[(String, Tensor)], cpu: &[(String, Tensor)]) {
    for ((name, g), (_, c)) in gpu.iter().zip(cpu) {
        assert_same_values(&format!("{what} {name}"), g, c);
    }
}

fn assert_close_norm(what: &str, gpu: f64, cpu: f64) {
    assert!(
        (gpu - cpu).abs() <= 1e-10 * cpu.abs().max(1e-30),
        "{what}: norm {gpu} on CUDA, {cpu} on CPU"
    );
}

/// 5 steps of Adam on both devices: plain, L2 and decoupled decay, with and
/// without clipping (clipping active: norms ≈ 30 ≫ max_norm; inactive:
/// max_norm far above them). Parameters, moments and norms agree.
#[test]
fn adam_matches_cpu_over_five_steps() {
    let Some(gpu) = gpu_or_skip("adam_matches_cpu_over_five_steps") else {
        return;
    };
    let configs = [
        ("adam", AdamConfig::adam(1e-2)),
        (
            "adam l2",
            AdamConfig {
                weight_decay: WeightDecay::L2(0.1),
                ..AdamConfig::adam(1e-2)
            },
        ),
        ("adamw", AdamConfig::adamw(1e-2, 0.1)),
    ];
    for (name, cfg) in configs {
        for clip in [None, Some(1.0), Some(1e6)] {
            let what = format!("{name} clip {clip:?}");
            let (pc, pg) = (params_on(Device::Cpu), params_on(gpu));
            let mut oc = Adam::new(pc.clone(), cfg).unwrap();
            let mut og = Adam::new(pg.clone(), cfg).unwrap();
            for t in 0..5 {
                set_grads(&pc, t, 1.0);
                set_grads(&pg, t, 1.0);
                match clip {
                    None => {
                        oc.step().unwrap();
                        og.step().unwrap();
                    }
                    Some(max) => {
                        let nc = oc.step_clipped(max).unwrap();
                        let ng = og.step_clipped(max).unwrap();
                        assert_close_norm(&what, ng, nc);
                    }
                }
            }
            assert_moved(&what, &pc);
            assert_same_params(&what, &pg, &pc);
            let (sc, sg) = (oc.state_dict().unwrap(), og.state_dict().unwrap());
            for ((key, g), (_, c)) in sg.iter().zip(&sc) {
                if key.starts_with("opt.step.") {
                    assert_eq!(g.item().unwrap(), c.item().unwrap(), "{what} {key}");
                } else {
                    assert_same_values(&format!("{what} {key}"), g, c);
                }
            }
        }
    }
}

/// The deferred step leaves the norm on the device until asked, and agrees
/// with the CPU.
#[test]
fn deferred_clipped_step_matches_cpu() {
    let Some(gpu) = gpu_or_skip("deferred_clipped_step_matches_cpu") else {
        return;
    };
    let (pc, pg) = (params_on(Device::Cpu), params_on(gpu));
    let cfg = AdamConfig::adamw(1e-3, 0.01);
    let mut oc = Adam::new(pc.clone(), cfg).unwrap();
    let mut og = Adam::new(pg.clone(), cfg).unwrap();
    for t in 0..3 {
        set_grads(&pc, t, 4.0);
        set_grads(&pg, t, 4.0);
        let nc = oc.step_clipped(2.0).unwrap();
        let ng = og.step_clipped_deferred(2.0).unwrap();
        assert_eq!(ng.device(), gpu);
        assert_close_norm("deferred", ng.value().unwrap(), nc);
    }
    assert_moved("deferred", &pc);
    assert_same_params("deferred", &pg, &pc);
}

/// A non-finite norm is not a host decision: the device computes the
/// CPU's coefficient (0 for ∞, 1 for NaN) and both run the step.
#[test]
fn non_finite_norms_behave_as_on_cpu() {
    let Some(gpu) = gpu_or_skip("non_finite_norms_behave_as_on_cpu") else {
        return;
    };
    for bad in [f64::INFINITY, f64::NAN] {
        let (pc, pg) = (params_on(Device::Cpu), params_on(gpu));
        let mut oc = Adam::new(pc.clone(), AdamConfig::adam(1e-2)).unwrap();
        let mut og = Adam::new(pg.clone(), AdamConfig::adam(1e-2)).unwrap();
        set_grads(&pc, 0, 1.0);
        set_grads(&pg, 0, 1.0);
        // One poisoned element in the middle parameter.
        let mut g = pc[1].1.grad().unwrap().to_vec_f64();
        g[3] = bad;
        let poisoned = Tensor::from_vec(&g, &[7], DType::F32, Device::Cpu).unwrap();
        pc[1].1.set_grad(Some(poisoned.clone()));
        pg[1].1.set_grad(Some(poisoned.to_device(gpu).unwrap()));
        let (nc, ng) = (oc.step_clipped(1.0).unwrap(), og.step_clipped(1.0).unwrap());
        assert_eq!(nc.is_nan(), ng.is_nan(), "{bad}: norms {nc} vs {ng}");
        assert_eq!(
            nc.is_infinite(),
            ng.is_infinite(),
            "{bad}: norms {nc} vs {ng}"
        );
        for ((name, g), (_, c)) in pg.iter().zip(&pc) {
            let (g, c) = (g.to_vec_f64(), c.to_vec_f64());
            for (i, (a, b)) in g.iter().zip(&c).enumerate() {
                assert!(
                    (a.is_nan() && b.is_nan()) || (a - b).abs() <= TOL * b.abs().max(1.0),
                    "{bad}: {name}[{i}] is {a} on CUDA, {b} on CPU"
                );
            }
        }
    }
}

#[test]
fn ema_matches_cpu() {
    let Some(gpu) = gpu_or_skip("ema_matches_cpu") else {
        return;
    };
    let (pc, pg) = (params_on(Device::Cpu), params_on(gpu));
    let (mut ec, mut eg) = (
        Ema::new(pc.clone(), 0.9).unwrap(),
        Ema::new(pg.clone(), 0.9).unwrap(),
    );
    let mut oc = Adam::new(pc.clone(), AdamConfig::adam(0.1)).unwrap();
    let mut og = Adam::new(pg.clone(), AdamConfig::adam(0.1)).unwrap();
    for t in 0..3 {
        set_grads(&pc, t, 1.0);
        set_grads(&pg, t, 1.0);
        oc.step().unwrap();
        og.step().unwrap();
        ec.update().unwrap();
        eg.update().unwrap();
    }
    for ((key, g), (_, c)) in eg.state_dict().iter().zip(&ec.state_dict()) {
        assert_eq!(g.device(), gpu);
        assert_same_values(key, g, c);
    }
}

/// The global norm, with a gradient that is a strided view (packed for the
/// reduction) and a parameter without a gradient; and `clip_grad_norm`.
#[test]
fn grad_norm_matches_cpu() {
    let Some(gpu) = gpu_or_skip("grad_norm_matches_cpu") else {
        return;
    };
    let (pc, pg) = (params_on(Device::Cpu), params_on(gpu));
    set_grads(&pc, 7, 3.0);
    set_grads(&pg, 7, 3.0);
    let g = randn(&[33, 64], 77);
    pc[0].1.set_grad(Some(g.transpose(0, 1).unwrap()));
    pg[0]
        .1
        .set_grad(Some(g.to_device(gpu).unwrap().transpose(0, 1).unwrap()));
    pc[2].1.set_grad(None);
    pg[2].1.set_grad(None);
    let (tc, tg): (Vec<Tensor>, Vec<Tensor>) = (
        pc.iter().map(|(_, p)| p.clone()).collect(),
        pg.iter().map(|(_, p)| p.clone()).collect(),
    );
    let (nc, ng) = (grad_norm(&tc).unwrap(), grad_norm(&tg).unwrap());
    assert_close_norm("grad_norm", ng, nc);
    let (cc, cg) = (
        clip_grad_norm(&tc, 1.0).unwrap(),
        clip_grad_norm(&tg, 1.0).unwrap(),
    );
    assert_close_norm("clip_grad_norm", cg, cc);
    for (g, c) in tg.iter().zip(&tc) {
        if let (Some(g), Some(c)) = (g.grad(), c.grad()) {
            assert_same_values("clipped gradient", &g, &c);
        }
    }
}
