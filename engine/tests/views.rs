//! Views share storage and read the right elements; copies do not share;
//! constructors and seeded random fills produce what they promise. The
//! view and copy tests run on every device (`test_on_devices!`): the same
//! body on the CPU and on CUDA (a GPU, or the CUDA emulator).

use noisegrad_engine::{DType, Device, Philox, Tensor, test_on_devices};

/// 0, 1, 2, … in `shape`, f32 (exact for these small integers, and the
/// dtype CUDA tensors have).
fn arange_on(device: Device, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::arange(n, DType::F32, device)
        .unwrap()
        .reshape(shape)
        .unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_vec_f64()
}

test_on_devices!(
    reshape_is_a_view_of_contiguous_data_and_a_copy_otherwise,
    reshape_is_a_view_of_contiguous_data_and_a_copy_otherwise_cpu,
    reshape_is_a_view_of_contiguous_data_and_a_copy_otherwise_cuda
);

fn reshape_is_a_view_of_contiguous_data_and_a_copy_otherwise(device: Device) {
    let arange = |shape: &[usize]| arange_on(device, shape);
    let x = arange(&[2, 3, 4]);
    let r = x.reshape(&[6, 4]).unwrap();
    assert!(r.shares_storage(&x) && r.is_contiguous());
    assert_eq!(values(&r), values(&x));
    let r = x.reshape_infer(&[4, -1]).unwrap();
    assert!(r.shares_storage(&x));
    assert_eq!(r.shape(), &[4, 6]);
    // A permuted tensor is not contiguous: reshape must copy, in the
    // permuted (logical) order.
    let p = x.permute(&[2, 0, 1]).unwrap();
    let r = p.reshape(&[4, 6]).unwrap();
    assert!(!r.shares_storage(&x));
    assert_eq!(values(&r), values(&p));
    // Narrowing the first axis keeps the data contiguous (just offset): a view.
    let n = x.narrow(0, 1, 1).unwrap();
    let r = n.reshape(&[12]).unwrap();
    assert!(r.shares_storage(&x));
    assert_eq!(values(&r), (12..24).map(f64::from).collect::<Vec<_>>());
    // Narrowing an inner axis leaves gaps: a copy.
    let n = x.narrow(2, 1, 2).unwrap();
    let r = n.reshape(&[12]).unwrap();
    assert!(!r.shares_storage(&x));
    assert_eq!(values(&r)[..4], [1.0, 2.0, 5.0, 6.0]);
}

test_on_devices!(
    permute_and_transpose_are_views_with_permuted_values,
    permute_and_transpose_are_views_with_permuted_values_cpu,
    permute_and_transpose_are_views_with_permuted_values_cuda
);

fn permute_and_transpose_are_views_with_permuted_values(device: Device) {
    let arange = |shape: &[usize]| arange_on(device, shape);
    let x = arange(&[2, 3]);
    let t = x.transpose(0, 1).unwrap();
    assert!(t.shares_storage(&x) && !t.is_contiguous());
    assert_eq!(t.shape(), &[3, 2]);
    assert_eq!(values(&t), [0., 3., 1., 4., 2., 5.]);
    let x = arange(&[2, 3, 4]);
    let p = x.permute(&[1, 2, 0]).unwrap();
    assert!(p.shares_storage(&x));
    assert_eq!(p.shape(), &[3, 4, 2]);
    // p[i, j, k] = x[k, i, j] = 12k + 4i + j
    let v = values(&p);
    for i in 0..3 {
        for j in 0..4 {
            for k in 0..2 {
                assert_eq!(v[(i * 4 + j) * 2 + k], (12 * k + 4 * i + j) as f64);
            }
        }
    }
    // Permuting back restores a contiguous layout over the same storage.
    let back = p.permute(&[2, 0, 1]).unwrap();
    assert!(back.is_contiguous() && back.shares_storage(&x));
    assert_eq!(values(&back), values(&x));
}

test_on_devices!(
    narrow_split_and_chunk_are_views,
    narrow_split_and_chunk_are_views_cpu,
    narrow_split_and_chunk_are_views_cuda
);

fn narrow_split_and_chunk_are_views(device: Device) {
    let arange = |shape: &[usize]| arange_on(device, shape);
    let x = arange(&[3, 4]);
    let n = x.narrow(1, 1, 2).unwrap();
    assert!(n.shares_storage(&x));
    assert_eq!(values(&n), [1., 2., 5., 6., 9., 10.]);
    let nn = n.narrow(0, 2, 1).unwrap();
    assert_eq!(values(&nn), [9., 10.]);
    let parts = x.split(1, &[1, 3]).unwrap();
    assert!(parts.iter().all(|p| p.shares_storage(&x)));
    assert_eq!(values(&parts[0]), [0., 4., 8.]);
    assert_eq!(values(&parts[1]), [1., 2., 3., 5., 6., 7., 9., 10., 11.]);
    let chunks = x.chunk(3, 0).unwrap();
    assert_eq!(chunks.len(), 3);
    for (i, c) in chunks.iter().enumerate() {
        assert!(c.shares_storage(&x));
        let start = (4 * i) as f64;
        assert_eq!(values(c), [start, start + 1., start + 2., start + 3.]);
    }
}

test_on_devices!(
    broadcast_unsqueeze_and_squeeze_are_views,
    broadcast_unsqueeze_and_squeeze_are_views_cpu,
    broadcast_unsqueeze_and_squeeze_are_views_cuda
);

fn broadcast_unsqueeze_and_squeeze_are_views(device: Device) {
    let arange = |shape: &[usize]| arange_on(device, shape);
    let x = arange(&[3, 1]);
    let b = x.broadcast_to(&[2, 3, 2]).unwrap();
    assert!(b.shares_storage(&x));
    assert_eq!(b.layout().strides()[0], 0);
    assert_eq!(values(&b), [0., 0., 1., 1., 2., 2., 0., 0., 1., 1., 2., 2.]);
    let s = Tensor::scalar(7.0, DType::F32, device).unwrap();
    assert_eq!(values(&s.broadcast_to(&[2, 2]).unwrap()), [7.0; 4]);
    let y = arange(&[2, 3]);
    for axis in 0..=2 {
        let u = y.unsqueeze(axis).unwrap();
        assert!(u.shares_storage(&y) && u.is_contiguous());
        assert_eq!(u.rank(), 3);
        assert_eq!(u.shape()[axis], 1);
        assert_eq!(values(&u), values(&y));
        let sq = u.squeeze(axis).unwrap();
        assert!(sq.shares_storage(&y));
        assert_eq!(sq.shape(), &[2, 3]);
    }
    // unsqueeze of a transposed view keeps the permuted order.
    let u = y.transpose(0, 1).unwrap().unsqueeze(1).unwrap();
    assert_eq!(u.shape(), &[3, 1, 2]);
    assert_eq!(values(&u), [0., 3., 1., 4., 2., 5.]);
}

test_on_devices!(
    contiguous_copies_only_when_needed,
    contiguous_copies_only_when_needed_cpu,
    contiguous_copies_only_when_needed_cuda
);

fn contiguous_copies_only_when_needed(device: Device) {
    let arange = |shape: &[usize]| arange_on(device, shape);
    let x = arange(&[2, 3]);
    let c = x.contiguous().unwrap();
    assert!(c.shares_storage(&x), "already contiguous: no copy");
    let t = x.transpose(0, 1).unwrap();
    let c = t.contiguous().unwrap();
    assert!(!c.shares_storage(&x) && c.is_contiguous());
    assert_eq!(values(&c), [0., 3., 1., 4., 2., 5.]);
    assert_eq!(c.layout().strides(), &[2, 1]);
    // A broadcast view materialises every repeated element.
    let b = arange(&[3])
        .broadcast_to(&[2, 3])
        .unwrap()
        .contiguous()
        .unwrap();
    assert_eq!(values(&b), [0., 1., 2., 0., 1., 2.]);
}

test_on_devices!(
    concat_writes_each_piece_in_place,
    concat_writes_each_piece_in_place_cpu,
    concat_writes_each_piece_in_place_cuda
);

fn concat_writes_each_piece_in_place(device: Device) {
    let arange = |shape: &[usize]| arange_on(device, shape);
    let a = arange(&[2, 2]);
    let b = arange(&[2, 3]).transpose(0, 1).unwrap(); // [3, 2], strided
    let c = Tensor::concat(&[&a, &b], 0).unwrap();
    assert_eq!(c.shape(), &[5, 2]);
    assert_eq!(values(&c), [0., 1., 2., 3., 0., 3., 1., 4., 2., 5.]);
    let c = Tensor::concat(&[&a, &a, &a], 1).unwrap();
    assert_eq!(values(&c), [0., 1., 0., 1., 0., 1., 2., 3., 2., 3., 2., 3.]);
}

#[test]
fn constructors() {
    let cpu = Device::Cpu;
    assert_eq!(
        values(&Tensor::arange(5, DType::F32, cpu).unwrap()),
        [0., 1., 2., 3., 4.]
    );
    assert_eq!(Tensor::arange(0, DType::F64, cpu).unwrap().shape(), &[0]);
    let z = Tensor::zeros(&[2, 3], DType::F32, cpu).unwrap();
    assert_eq!((z.shape(), z.dtype()), (&[2usize, 3][..], DType::F32));
    assert_eq!(values(&z), [0.0; 6]);
    assert_eq!(
        values(&Tensor::ones(&[4], DType::F64, cpu).unwrap()),
        [1.0; 4]
    );
    assert_eq!(
        values(&Tensor::full(&[2, 2], -2.5, DType::F32, cpu).unwrap()),
        [-2.5; 4]
    );
    let s = Tensor::scalar(3.0, DType::F64, cpu).unwrap();
    assert_eq!((s.rank(), s.numel(), s.item().unwrap()), (0, 1, 3.0));
    let x = Tensor::from_f32(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[3, 2]).unwrap();
    assert_eq!(x.dim(0).unwrap(), 3);
    assert_eq!(values(&x.zeros_like().unwrap()), [0.0; 6]);
    assert_eq!(values(&x.ones_like().unwrap()), [1.0; 6]);
    assert_eq!(values(&x.full_like(9.0).unwrap()), [9.0; 6]);
    assert_eq!(x.full_like(9.0).unwrap().dtype(), DType::F32);
    // to_dtype copies.
    let x64 = Tensor::arange(6, DType::F64, cpu).unwrap();
    let f = x64.to_dtype(DType::F32).unwrap();
    assert!(!f.shares_storage(&x64));
    assert_eq!((f.dtype(), values(&f)), (DType::F32, values(&x64)));
    // f32 storage rounds on construction.
    let r = Tensor::from_vec(&[0.1f64], &[1], DType::F32, cpu).unwrap();
    assert_eq!(r.to_vec_f32(), [0.1f32]);
}

fn mean_var(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    (m, v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n)
}

#[test]
fn randn_is_seeded_reproducible_and_standard_normal() {
    let draw = |seed: u64, n: usize| {
        let mut rng = Philox::new(seed);
        values(&Tensor::randn(&[n], DType::F64, Device::Cpu, &mut rng).unwrap())
    };
    assert_eq!(draw(42, 1000), draw(42, 1000), "same seed, same values");
    assert_ne!(
        draw(42, 1000),
        draw(43, 1000),
        "different seed, different values"
    );
    // Successive draws from one generator continue the stream.
    let mut rng = Philox::new(42);
    let a = values(&Tensor::randn(&[7], DType::F64, Device::Cpu, &mut rng).unwrap());
    let b = values(&Tensor::randn(&[7], DType::F64, Device::Cpu, &mut rng).unwrap());
    assert_ne!(a, b);
    // f32 gives the f64 values rounded.
    let mut rng = Philox::new(42);
    let f = Tensor::randn(&[1000], DType::F32, Device::Cpu, &mut rng).unwrap();
    let d = draw(42, 1000);
    assert!(f.to_vec_f32().iter().zip(&d).all(|(x, y)| *x == *y as f32));

    let v = draw(7, 100_000);
    let (m, var) = mean_var(&v);
    // Standard errors: 1/√n ≈ 0.0032 for the mean, √(2/n) ≈ 0.0045 for the variance.
    assert!(m.abs() < 0.015, "mean {m}");
    assert!((var - 1.0).abs() < 0.02, "variance {var}");
    let tails = v.iter().filter(|x| x.abs() > 1.96).count() as f64 / v.len() as f64;
    assert!(
        (tails - 0.05).abs() < 0.005,
        "two-sided 5% tail holds {tails}"
    );
    assert!(v.iter().all(|x| x.is_finite()));
}

#[test]
fn rand_is_uniform_in_the_open_interval() {
    let mut rng = Philox::new(9);
    let v = values(&Tensor::rand(&[100_000], DType::F64, Device::Cpu, &mut rng).unwrap());
    assert!(v.iter().all(|&x| x > 0.0 && x < 1.0));
    let (m, var) = mean_var(&v);
    assert!((m - 0.5).abs() < 0.005, "mean {m}");
    assert!((var - 1.0 / 12.0).abs() < 0.002, "variance {var}");
    // Every tenth of the interval gets about a tenth of the samples.
    let mut bins = [0usize; 10];
    for x in &v {
        bins[(x * 10.0) as usize] += 1;
    }
    assert!(
        bins.iter().all(|&b| (b as i64 - 10_000).abs() < 500),
        "{bins:?}"
    );
    // Odd lengths (a partial last block) are filled too, reproducibly.
    let mut r1 = Philox::new(3);
    let mut r2 = Philox::new(3);
    let a = Tensor::rand(&[5], DType::F32, Device::Cpu, &mut r1).unwrap();
    let b = Tensor::rand(&[5], DType::F32, Device::Cpu, &mut r2).unwrap();
    assert_eq!(values(&a), values(&b));
    assert!(values(&a).iter().all(|&x| x > 0.0 && x < 1.0));
}

#[test]
fn dropout_keeps_one_minus_p_and_rescales() {
    let x = Tensor::ones(&[100_000], DType::F32, Device::Cpu).unwrap();
    let mut rng = Philox::new(1);
    let y = values(&x.dropout(0.25, true, &mut rng).unwrap());
    let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / y.len() as f64;
    assert!((kept - 0.75).abs() < 0.01, "kept {kept}");
    assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    let mut rng = Philox::new(1);
    assert_eq!(values(&x.dropout(0.25, true, &mut rng).unwrap()), y);
    let mut rng = Philox::new(1);
    assert!(x.dropout(0.25, false, &mut rng).unwrap().shares_storage(&x));
}
