//! Named parameters, initializers and the Linear layer.

use noisegrad_engine::gradcheck::{GradcheckOptions, gradcheck};
use noisegrad_engine::io::{load, save};
use noisegrad_engine::nn::init::{fan_avg_uniform_limit, fans};
use noisegrad_engine::nn::{Init, Linear, ParamStore, default_init};
use noisegrad_engine::{DType, Device, Philox, Tensor, no_grad};
use std::collections::HashMap;

fn store(seed: u64) -> ParamStore {
    ParamStore::new(DType::F32, Device::Cpu, seed)
}

/// A two-level model: down.0.res.conv1.{weight,bias}, down.1.proj.{weight,bias}.
fn build(s: &ParamStore) {
    let res = s.sub("down").sub(0).sub("res").sub("conv1");
    res.param("weight", &[4, 3, 3, 3], default_init(1.0))
        .unwrap();
    res.param("bias", &[4], Init::Zeros).unwrap();
    Linear::new(&s.sub("down").sub(1).sub("proj"), 6, 5).unwrap();
}

#[test]
fn names_are_hierarchical_and_in_creation_order() {
    let s = store(0);
    build(&s);
    let names: Vec<String> = s.params().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "down.0.res.conv1.weight",
            "down.0.res.conv1.bias",
            "down.1.proj.weight",
            "down.1.proj.bias"
        ]
    );
    assert_eq!(s.len(), 4);
    assert_eq!(s.num_elements(), 4 * 3 * 9 + 4 + 5 * 6 + 5);
    assert_eq!(s.get("down.1.proj.weight").unwrap().shape(), &[5, 6]);
    assert_eq!(s.sub("a").sub(7).path(), "a.7");
    assert_eq!(s.root().full_name("w"), "w");
}

#[test]
fn params_are_leaves_that_require_grad_and_share_the_stored_buffer() {
    let s = store(0);
    let w = s.root().param("w", &[2, 3], Init::Ones).unwrap();
    assert!(w.requires_grad());
    assert!(w.grad().is_none());
    let again = s.get("w").unwrap();
    assert!(again.shares_storage(&w));
    // Same leaf: a gradient through one handle is visible on the other.
    w.mul_scalar(2.0)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(again.grad().unwrap().to_vec_f64(), vec![2.0; 6]);
}

#[test]
fn bad_names_and_lookups_are_errors_that_say_why() {
    let s = store(0);
    build(&s);
    let dup = s
        .sub("down")
        .sub(1)
        .sub("proj")
        .param("bias", &[5], Init::Zeros)
        .unwrap_err()
        .to_string();
    assert!(dup.contains("'down.1.proj.bias' already exists"), "{dup}");
    let empty = s
        .sub("")
        .param("w", &[1], Init::Zeros)
        .unwrap_err()
        .to_string();
    assert!(empty.contains("empty component"), "{empty}");
    let missing = s.get("down.1.proj.wieght").unwrap_err().to_string();
    assert!(
        missing.contains("down.1.proj.wieght") && missing.contains("down.1.proj.weight"),
        "{missing}"
    );
}

#[test]
fn same_seed_same_values_different_seed_different_values() {
    let values = |seed| {
        let s = store(seed);
        build(&s);
        s.get("down.0.res.conv1.weight").unwrap().to_vec_f64()
    };
    assert_eq!(values(3), values(3));
    assert_ne!(values(3), values(4));
}

#[test]
fn state_dict_round_trips_through_a_file_and_updates_every_handle() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nn-state-dict");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    let a = store(1);
    build(&a);
    save(&path, &a.state_dict(), &HashMap::new()).unwrap();

    let b = store(2);
    build(&b);
    let handle = b.get("down.1.proj.weight").unwrap();
    let clone = handle.clone();
    assert_ne!(
        handle.to_vec_f64(),
        a.get("down.1.proj.weight").unwrap().to_vec_f64()
    );
    b.load_state_dict(&load(&path, Device::Cpu).unwrap().tensors)
        .unwrap();
    for (name, t) in a.params() {
        assert_eq!(b.get(&name).unwrap().to_vec_f64(), t.to_vec_f64(), "{name}");
    }
    // Handles taken before loading see the loaded values (in-place load).
    assert_eq!(
        clone.to_vec_f64(),
        a.get("down.1.proj.weight").unwrap().to_vec_f64()
    );
    assert!(clone.requires_grad());
}

#[test]
fn load_converts_dtype() {
    let s = store(0);
    let w = s.root().param("w", &[3], Init::Zeros).unwrap();
    let src = Tensor::from_vec(&[0.5f64, -1.0, 2.0], &[3], DType::F64, Device::Cpu).unwrap();
    s.load_state_dict(&[("w".into(), src)]).unwrap();
    assert_eq!(w.dtype(), DType::F32);
    assert_eq!(w.to_vec_f64(), [0.5, -1.0, 2.0]);
}

#[test]
fn load_with_wrong_shape_missing_or_unexpected_names_fails_and_changes_nothing() {
    let s = store(0);
    build(&s);
    let before: Vec<Vec<f64>> = s.tensors().iter().map(|t| t.to_vec_f64()).collect();
    let mut sd: Vec<(String, Tensor)> = s
        .state_dict()
        .into_iter()
        .map(|(n, t)| (n, t.zeros_like().unwrap()))
        .collect();
    // Wrong shape for one weight, one name missing, one unexpected.
    sd[2].1 = Tensor::zeros(&[6, 5], DType::F32, Device::Cpu).unwrap();
    sd.remove(1);
    sd.push((
        "up.0.weight".into(),
        Tensor::zeros(&[1], DType::F32, Device::Cpu).unwrap(),
    ));
    let err = s.load_state_dict(&sd).unwrap_err().to_string();
    for part in [
        "'down.1.proj.weight' has shape [6, 5] in the input but [5, 6] in the model",
        "missing 1: 'down.0.res.conv1.bias'",
        "unexpected 1: 'up.0.weight'",
    ] {
        assert!(err.contains(part), "missing «{part}» in: {err}");
    }
    let after: Vec<Vec<f64>> = s.tensors().iter().map(|t| t.to_vec_f64()).collect();
    assert_eq!(before, after, "a failed load must not change any parameter");
}

#[test]
fn fans_follow_the_out_in_kernel_layout() {
    assert_eq!(fans(&[5, 6]), (6, 5)); // dense [out, in]
    assert_eq!(fans(&[8, 4, 3, 3]), (4 * 9, 8 * 9)); // conv [out, in, kh, kw]
    assert_eq!(fans(&[7]), (7, 7));
    assert_eq!(fans(&[]), (1, 1));
    // a = √(3·scale / ((fan_in + fan_out)/2))
    let a = fan_avg_uniform_limit(&[8, 4, 3, 3], 2.0);
    assert!((a - (3.0f64 * 2.0 / 54.0).sqrt()).abs() < 1e-15);
    assert_eq!(default_init(0.0), Init::FanAvgUniform { scale: 1e-10 });
    assert_eq!(default_init(0.5), Init::FanAvgUniform { scale: 0.5 });
}

#[test]
fn fan_avg_uniform_has_the_right_bound_and_variance() {
    let mut rng = Philox::new(11);
    for (shape, scale) in [(vec![128usize, 64, 3, 3], 1.0), (vec![512, 256], 0.2)] {
        let a = fan_avg_uniform_limit(&shape, scale);
        let x = Init::FanAvgUniform { scale }
            .sample(&shape, DType::F32, Device::Cpu, &mut rng)
            .unwrap()
            .to_vec_f64();
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let (fi, fo) = fans(&shape);
        let want_var = scale / ((fi + fo) as f64 / 2.0); // = a²/3
        assert!(
            x.iter().all(|v| v.abs() <= a),
            "{shape:?}: value beyond ±{a}"
        );
        let max = x.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(
            max > 0.999 * a,
            "{shape:?}: the range is not filled ({max} vs {a})"
        );
        // n ≥ 73k samples: the relative standard error of the variance is ≤ 0.5%.
        assert!(
            (var / want_var - 1.0).abs() < 0.02,
            "{shape:?}: var {var} vs {want_var}"
        );
        assert!(mean.abs() < 0.01 * a, "{shape:?}: mean {mean}");
    }
}

#[test]
fn zero_init_option_is_tiny_but_not_zero() {
    let mut rng = Philox::new(0);
    let x = default_init(0.0)
        .sample(&[16, 16], DType::F32, Device::Cpu, &mut rng)
        .unwrap()
        .to_vec_f64();
    let a = fan_avg_uniform_limit(&[16, 16], 1e-10);
    assert!(x.iter().all(|v| v.abs() <= a) && x.iter().any(|&v| v != 0.0));
    assert!(a < 1e-5);
}

#[test]
fn constant_initializers() {
    let mut rng = Philox::new(0);
    let z = Init::Zeros
        .sample(&[2, 2], DType::F64, Device::Cpu, &mut rng)
        .unwrap();
    let o = Init::Ones
        .sample(&[3], DType::F32, Device::Cpu, &mut rng)
        .unwrap();
    assert_eq!(z.to_vec_f64(), [0.0; 4]);
    assert_eq!(o.to_vec_f64(), [1.0; 3]);
    assert!(
        Init::FanAvgUniform { scale: 0.0 }
            .sample(&[2], DType::F32, Device::Cpu, &mut rng)
            .is_err()
    );
}

#[test]
fn linear_computes_x_wt_plus_b() {
    let s = ParamStore::new(DType::F64, Device::Cpu, 0);
    let lin = Linear::new(&s.sub("fc"), 3, 2).unwrap();
    assert_eq!((lin.in_features(), lin.out_features()), (3, 2));
    assert_eq!(lin.bias.to_vec_f64(), [0.0, 0.0]);
    let w = [[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]];
    s.load_state_dict(&[
        (
            "fc.weight".into(),
            Tensor::from_vec(&w.concat(), &[2, 3], DType::F64, Device::Cpu).unwrap(),
        ),
        (
            "fc.bias".into(),
            Tensor::from_vec(&[0.25, -0.5], &[2], DType::F64, Device::Cpu).unwrap(),
        ),
    ])
    .unwrap();
    let x = Tensor::from_vec(
        &[1.0, 0.0, 2.0, -1.0, 1.0, 1.0],
        &[2, 3],
        DType::F64,
        Device::Cpu,
    )
    .unwrap();
    let y = lin.forward(&x).unwrap();
    assert_eq!(y.shape(), &[2, 2]);
    // Row 0: [1+6, -1+0] + b; row 1: [-1+2+3, 1+0.5+0] + b.
    assert_eq!(y.to_vec_f64(), [7.25, -1.5, 4.25, 1.0]);
    // Batched input [2, 1, 3] → [2, 1, 2].
    let y3 = lin.forward(&x.reshape(&[2, 1, 3]).unwrap()).unwrap();
    assert_eq!(y3.shape(), &[2, 1, 2]);
    assert_eq!(y3.to_vec_f64(), y.to_vec_f64());
    let err = lin.forward(&Tensor::zeros(&[2, 4], DType::F64, Device::Cpu).unwrap());
    assert!(err.unwrap_err().to_string().contains("linear"));
}

#[test]
fn linear_gradcheck() {
    let s = ParamStore::new(DType::F64, Device::Cpu, 5);
    let lin = Linear::new(&s.sub("fc"), 4, 3).unwrap();
    let b = Tensor::randn(&[3], DType::F64, Device::Cpu, &mut Philox::new(2)).unwrap();
    let x = Tensor::randn(&[2, 5, 4], DType::F64, Device::Cpu, &mut Philox::new(1)).unwrap();
    let inputs = no_grad(|| [x, lin.weight.detach(), b]);
    let r = gradcheck(
        |v| {
            let l = Linear {
                weight: v[1].clone(),
                bias: v[2].clone(),
            };
            l.forward(&v[0])
        },
        &inputs,
        GradcheckOptions::default(),
    )
    .unwrap();
    assert_eq!(r.checked, 40 + 12 + 3);
}
