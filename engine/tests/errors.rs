//! Bad input returns an `Err` whose message names the op and the shapes
//! (or values) involved; nothing panics.

mod common;

use common::randn;
use noisegrad_engine::{DType, Device, Error, Philox, Result, Tensor};

fn t(shape: &[usize]) -> Tensor {
    randn(shape, 1)
}

/// Asserts `r` is an error whose message contains every needle.
fn expect_err<T: std::fmt::Debug>(r: Result<T>, needles: &[&str]) -> Error {
    let e = r.expect_err(&format!("expected an error mentioning {needles:?}"));
    let msg = e.to_string();
    for n in needles {
        assert!(msg.contains(n), "message {msg:?} does not mention {n:?}");
    }
    e
}

#[test]
fn broadcasting_binary_ops() {
    let e = expect_err(t(&[2, 3]).add(&t(&[4])), &["add", "[2, 3]", "[4]"]);
    assert!(matches!(e, Error::ShapeMismatch { op: "add", .. }));
    expect_err(
        t(&[2, 3]).sub(&t(&[2, 1, 4])),
        &["sub", "[2, 3]", "[2, 1, 4]"],
    );
    expect_err(t(&[3]).mul(&t(&[2])), &["mul", "[3]", "[2]"]);
    expect_err(t(&[3]).div(&t(&[2])), &["div", "[3]", "[2]"]);
    expect_err(t(&[3]).maximum(&t(&[2])), &["maximum", "[3]", "[2]"]);
    expect_err(t(&[3]).minimum(&t(&[2])), &["minimum", "[3]", "[2]"]);
    expect_err(t(&[3]).lt(&t(&[2])), &["lt", "[3]", "[2]"]);
}

#[test]
fn dtype_mismatch() {
    let a = t(&[2, 3]).to_dtype(DType::F32).unwrap();
    let b = t(&[2, 3]);
    let e = expect_err(a.add(&b), &["add", "F32", "F64"]);
    assert!(matches!(e, Error::DTypeMismatch { op: "add", .. }));
    expect_err(
        a.matmul(&b.transpose(0, 1).unwrap()),
        &["matmul", "F32", "F64"],
    );
    expect_err(Tensor::concat(&[&a, &b], 0), &["concat", "F32", "F64"]);
    expect_err(Tensor::where_cond(&a, &a, &b), &["where", "F32", "F64"]);
    expect_err(Tensor::where_cond(&b, &a, &a), &["where", "F64", "F32"]);
    expect_err(a.mse_loss(&b), &["F32", "F64"]);
}

#[test]
fn matmul() {
    let e = expect_err(
        t(&[2, 3]).matmul(&t(&[4, 5])),
        &["matmul", "[2, 3]", "[4, 5]", "inner"],
    );
    assert!(matches!(e, Error::ShapeMismatch { .. }));
    expect_err(t(&[3]).matmul(&t(&[3, 2])), &["matmul", "[3]", "rank"]);
    expect_err(
        t(&[2, 3, 4]).matmul(&t(&[3, 4, 5])),
        &["matmul", "[2]", "[3]"],
    );
}

#[test]
fn reshape() {
    expect_err(t(&[2, 3]).reshape(&[4]), &["reshape", "[2, 3]", "[4]"]);
    expect_err(t(&[2, 3]).reshape_infer(&[-1, 4]), &["reshape", "[2, 3]"]);
    expect_err(
        t(&[2, 3]).reshape_infer(&[-1, -1]),
        &["reshape", "[-1, -1]"],
    );
    expect_err(t(&[2, 3]).reshape_infer(&[-2, 3]), &["reshape", "[-2, 3]"]);
    // Sizes that would overflow (or wrap to −1) are errors, not panics or
    // silent inference.
    expect_err(t(&[2, 3]).reshape(&[usize::MAX]), &["reshape"]);
    expect_err(t(&[2, 3]).reshape(&[usize::MAX / 2, 4]), &["reshape"]);
    expect_err(
        t(&[2, 3]).reshape(&[0, 6]),
        &["reshape", "[2, 3]", "[0, 6]"],
    );
}

#[test]
fn views() {
    expect_err(t(&[3, 4]).narrow(1, 3, 2), &["narrow", "3..5", "[3, 4]"]);
    expect_err(t(&[3, 4]).narrow(2, 0, 1), &["narrow", "axis 2", "[3, 4]"]);
    expect_err(t(&[3, 4]).narrow(0, usize::MAX, 2), &["narrow", "[3, 4]"]);
    expect_err(
        t(&[2, 3]).permute(&[0, 0]),
        &["permute", "[0, 0]", "[2, 3]"],
    );
    expect_err(t(&[2, 3]).permute(&[0]), &["permute", "[0]", "[2, 3]"]);
    expect_err(
        t(&[2, 3]).permute(&[0, 2]),
        &["permute", "[0, 2]", "[2, 3]"],
    );
    expect_err(t(&[2, 3]).transpose(0, 2), &["transpose", "[2, 3]"]);
    expect_err(t(&[2, 3]).squeeze(1), &["squeeze", "axis 1", "[2, 3]"]);
    expect_err(t(&[2, 3]).squeeze(2), &["squeeze", "[2, 3]"]);
    expect_err(t(&[2, 3]).unsqueeze(3), &["unsqueeze", "axis 3"]);
    expect_err(
        t(&[2, 3]).broadcast_to(&[2, 4]),
        &["broadcast_to", "[2, 3]", "[2, 4]"],
    );
    expect_err(
        t(&[2, 3]).broadcast_to(&[3]),
        &["broadcast_to", "[2, 3]", "[3]"],
    );
    expect_err(t(&[2, 6]).split(1, &[2, 3]), &["split", "[2, 3]", "[2, 6]"]);
    expect_err(t(&[2, 6]).split(2, &[2]), &["split", "[2, 6]"]);
    expect_err(t(&[2, 6]).split(1, &[usize::MAX, 7]), &["split", "[2, 6]"]);
    expect_err(t(&[2, 6]).chunk(4, 1), &["chunk", "4", "[2, 6]"]);
    expect_err(t(&[2, 6]).chunk(0, 1), &["chunk", "[2, 6]"]);
    expect_err(t(&[2, 6]).dim(2), &["dim", "[2, 6]"]);
}

#[test]
fn concat() {
    let e = expect_err(
        Tensor::concat(&[&t(&[2, 3]), &t(&[2, 4])], 0),
        &["concat", "[2, 3]", "[2, 4]"],
    );
    assert!(matches!(e, Error::ShapeMismatch { .. }));
    expect_err(
        Tensor::concat(&[&t(&[2, 3]), &t(&[2, 3, 1])], 1),
        &["concat", "[2, 3]", "[2, 3, 1]"],
    );
    expect_err(Tensor::concat(&[&t(&[2, 3])], 2), &["concat", "axis 2"]);
    expect_err(Tensor::concat(&[], 0), &["concat"]);
}

#[test]
fn indexing() {
    expect_err(
        t(&[5, 3]).index_select(0, &[1, 5]),
        &["index_select", "5", "axis 0", "[5, 3]"],
    );
    expect_err(
        t(&[5, 3]).index_select(2, &[0]),
        &["index_select", "[5, 3]"],
    );
    let ids = Tensor::from_vec(&[1.0, -1.0], &[2], DType::F64, Device::Cpu).unwrap();
    expect_err(t(&[5, 3]).gather_rows(0, &ids), &["gather_rows", "-1"]);
    let ids = Tensor::from_vec(&[0.5], &[1], DType::F64, Device::Cpu).unwrap();
    expect_err(t(&[5, 3]).gather_rows(0, &ids), &["gather_rows", "0.5"]);
    let ids = Tensor::from_vec(&[f64::NAN], &[1], DType::F64, Device::Cpu).unwrap();
    expect_err(t(&[5, 3]).gather_rows(0, &ids), &["gather_rows", "NaN"]);
    let ids = Tensor::from_vec(&[1e30], &[1], DType::F64, Device::Cpu).unwrap();
    expect_err(t(&[5, 3]).gather_rows(0, &ids), &["index"]);
}

#[test]
fn reductions_and_softmax() {
    expect_err(t(&[2, 3]).softmax(2), &["softmax", "axis 2", "[2, 3]"]);
    expect_err(
        t(&[2, 3]).log_softmax(5),
        &["log_softmax", "axis 5", "[2, 3]"],
    );
    expect_err(t(&[2, 3]).sum(&[2], false), &["sum", "axis 2", "[2, 3]"]);
    expect_err(
        t(&[2, 3]).mean(&[0, 3], true),
        &["mean", "axis 3", "[2, 3]"],
    );
    expect_err(t(&[2, 3]).max(&[2], false), &["max", "[2, 3]"]);
    expect_err(t(&[2, 0]).min(&[1], false), &["min", "empty", "[2, 0]"]);
    expect_err(t(&[2, 3]).sum_to(&[4]), &["sum_to", "[2, 3]", "[4]"]);
    expect_err(t(&[3]).sum_to(&[2, 3]), &["sum_to", "[3]", "[2, 3]"]);
}

#[test]
fn construction_and_readback() {
    let e = expect_err(
        Tensor::from_vec(&[1.0, 2.0, 3.0], &[2, 2], DType::F32, Device::Cpu),
        &["from_vec", "3", "[2, 2]"],
    );
    assert!(matches!(e, Error::BadArgument { op: "from_vec", .. }));
    expect_err(t(&[2]).item(), &["item", "[2]"]);
    // Element counts that overflow usize are errors, not panics.
    let huge = [usize::MAX, 2];
    expect_err(Tensor::zeros(&huge, DType::F32, Device::Cpu), &["zeros"]);
    expect_err(Tensor::full(&huge, 1.0, DType::F32, Device::Cpu), &["full"]);
    let mut rng = Philox::new(0);
    expect_err(
        Tensor::randn(&huge, DType::F32, Device::Cpu, &mut rng),
        &["randn"],
    );
    expect_err(
        Tensor::rand(&huge, DType::F32, Device::Cpu, &mut rng),
        &["rand"],
    );
}

#[test]
fn composites() {
    let mut rng = Philox::new(0);
    for p in [1.0, -0.1, f64::NAN] {
        expect_err(t(&[3]).dropout(p, true, &mut rng), &["dropout"]);
    }
    expect_err(
        t(&[2, 3]).mse_loss(&t(&[3])),
        &["mse_loss", "[2, 3]", "[3]"],
    );
    let c = t(&[2, 3]);
    expect_err(
        Tensor::where_cond(&c, &t(&[4]), &t(&[2, 3])),
        &["where", "[2, 3]", "[4]"],
    );
}

#[test]
fn backward_with_a_seed_of_another_dtype() {
    let x = t(&[2]).set_requires_grad(true);
    let y = x.softmax(0).unwrap();
    let seed = Tensor::ones(&[2], DType::F32, Device::Cpu).unwrap();
    expect_err(y.backward_with(&seed), &["backward", "F32", "F64"]);
}

/// Zero-sized tensors flow through every op without panicking.
#[test]
fn zero_sized_tensors() -> Result<()> {
    let e = t(&[2, 0]);
    assert_eq!(e.add(&t(&[0]))?.shape(), &[2, 0]);
    assert_eq!(e.exp()?.shape(), &[2, 0]);
    assert_eq!(e.sum(&[1], false)?.to_vec_f64(), [0.0, 0.0]);
    assert_eq!(e.sum_all()?.item()?, 0.0);
    assert_eq!(e.softmax(1)?.shape(), &[2, 0]);
    assert_eq!(e.softmax(0)?.shape(), &[2, 0]);
    assert_eq!(e.transpose(0, 1)?.contiguous()?.shape(), &[0, 2]);
    assert_eq!(e.matmul(&t(&[0, 3]))?.to_vec_f64(), [0.0; 6]);
    assert_eq!(t(&[0, 3]).matmul(&t(&[3, 2]))?.shape(), &[0, 2]);
    assert_eq!(t(&[3, 2]).index_select(0, &[])?.shape(), &[0, 2]);
    assert_eq!(Tensor::concat(&[&e, &t(&[2, 2])], 1)?.shape(), &[2, 2]);
    assert_eq!(t(&[4]).narrow(0, 4, 0)?.shape(), &[0]);
    assert_eq!(e.reshape_infer(&[0, -1])?.shape(), &[0, 0]);
    let x = t(&[2, 0]).set_requires_grad(true);
    x.exp()?.sum_all()?.backward()?;
    assert_eq!(x.grad().unwrap().shape(), &[2, 0]);
    Ok(())
}

/// A CPU tensor no machine can hold is an `OutOfMemory` error naming the
/// constructor, the shape and the bytes, not an abort of the process:
/// 1 PiB (more than the 128 TiB of user address space), and a size whose
/// byte count overflows the allocator's limit.
#[test]
fn impossible_cpu_allocations_are_errors_naming_shape_and_bytes() {
    let shape = [1usize << 24, 1 << 24];
    let mut rng = Philox::new(0);
    expect_err(
        Tensor::zeros(&shape, DType::F32, Device::Cpu),
        &[
            "zeros",
            "[16777216, 16777216]",
            "1125899906842624 bytes",
            "1.0 PiB",
            "out of memory",
        ],
    );
    expect_err(
        Tensor::full(&shape, 1.0, DType::F64, Device::Cpu),
        &["full", "[16777216, 16777216]", "2251799813685248 bytes"],
    );
    let e = expect_err(
        Tensor::randn(&shape, DType::F32, Device::Cpu, &mut rng),
        &["rand", "[16777216, 16777216]"],
    );
    assert!(matches!(e, Error::OutOfMemory { .. }));
    let huge = [1usize << 40, 1 << 22];
    expect_err(
        Tensor::zeros(&huge, DType::F64, Device::Cpu),
        &["zeros", "[1099511627776, 4194304]", "out of memory"],
    );
    // A normal allocation after the failures still works.
    let ok = Tensor::zeros(&[3, 4], DType::F32, Device::Cpu).unwrap();
    assert_eq!(ok.to_vec_f64(), vec![0.0; 12]);
}
