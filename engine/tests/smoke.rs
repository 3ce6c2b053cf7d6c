use noisegrad_engine::gradcheck::{GradcheckOptions, gradcheck};
use noisegrad_engine::{DType, Device, Philox, Tensor};

#[test]
fn mlp_gradcheck_smoke() {
    let mut rng = Philox::new(1);
    let x = Tensor::randn(&[3, 4], DType::F64, Device::Cpu, &mut rng).unwrap();
    let w = Tensor::randn(&[4, 5], DType::F64, Device::Cpu, &mut rng).unwrap();
    let b = Tensor::randn(&[5], DType::F64, Device::Cpu, &mut rng).unwrap();
    let r = gradcheck(
        |v| {
            v[0].matmul(&v[1])?
                .add(&v[2])?
                .silu()?
                .softmax(1)?
                .log()?
                .sum(&[0], false)
        },
        &[x, w, b],
        GradcheckOptions::default(),
    )
    .unwrap();
    assert_eq!(r.checked, 12 + 20 + 5);
}
