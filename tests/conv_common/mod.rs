//! Shared by the conv2d test binaries: the PyTorch fixtures and the
//! comparison against them (used with and without forced scalar kernels).

use noisegrad_engine::{DType, Device, Tensor, io};

pub const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/conv2d.safetensors"
);

/// Accepted error: max |ours − reference| ≤ 1e-4 · max |reference| per
/// tensor. Relative to the largest reference value rather than elementwise,
/// because gradient elements that cancel to near zero carry the absolute
/// rounding error of their large summands; the references themselves are
/// float64 results rounded to f32 (relative error ≤ 6e-8).
pub const RTOL: f64 = 1e-4;

pub fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let (g, w) = (got.to_vec_f64(), want.to_vec_f64());
    let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let err = g
        .iter()
        .zip(&w)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err <= RTOL * scale,
        "{what}: max |diff| {err:e} exceeds {RTOL:e} · max |ref| ({scale:e})"
    );
}

/// One fixture case: geometry and every stored tensor.
pub struct Case {
    pub name: String,
    pub stride: usize,
    pub padding: usize,
    pub x: Tensor,
    pub w: Tensor,
    pub b: Tensor,
    pub dy: Tensor,
    pub y: Tensor,
    pub dx: Tensor,
    pub dw: Tensor,
    pub db: Tensor,
}

pub fn cases() -> Vec<Case> {
    let file =
        io::load(FIXTURES, Device::Cpu).expect("fixture file (run scripts/fixtures_conv.py)");
    let names: Vec<String> = file
        .tensors
        .iter()
        .filter_map(|(n, _)| n.strip_suffix("/geometry").map(str::to_string))
        .collect();
    assert!(
        names.len() >= 10,
        "expected the fixture cases, found {names:?}"
    );
    names
        .into_iter()
        .map(|name| {
            let get = |k: &str| {
                file.get(&format!("{name}/{k}"))
                    .expect("fixture tensor")
                    .clone()
            };
            let geo: Vec<usize> = get("geometry")
                .to_vec_f64()
                .iter()
                .map(|&v| v as usize)
                .collect();
            Case {
                stride: geo[7],
                padding: geo[8],
                x: get("x"),
                w: get("w"),
                b: get("b"),
                dy: get("dy"),
                y: get("y"),
                dx: get("dx"),
                dw: get("dw"),
                db: get("db"),
                name,
            }
        })
        .collect()
}

/// Runs the engine op forward and backward in `dtype` and compares the
/// output and all three gradients with the references.
pub fn check_case_against_pytorch(c: &Case, dtype: DType) {
    let leaf = |t: &Tensor| t.to_dtype(dtype).unwrap().set_requires_grad(true);
    let (x, w, b) = (leaf(&c.x), leaf(&c.w), leaf(&c.b));
    let y = x.conv2d(&w, Some(&b), c.stride, c.padding).unwrap();
    y.backward_with(&c.dy.to_dtype(dtype).unwrap()).unwrap();
    let tag = |t: &str| format!("{} {dtype:?} {t}", c.name);
    assert_close(&tag("y"), &y, &c.y);
    assert_close(&tag("dx"), &x.grad().expect("dx"), &c.dx);
    assert_close(&tag("dw"), &w.grad().expect("dw"), &c.dw);
    assert_close(&tag("db"), &b.grad().expect("db"), &c.db);
}
