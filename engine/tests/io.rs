//! safetensors I/O: reading what PyTorch wrote, round trips, atomic writes
//! and errors that name the file.

use noisegrad_engine::io::{CHECKSUM_KEY, load, save};
use noisegrad_engine::{DType, Device, Error, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

const TORCH_WRITTEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/torch_written.safetensors"
);

/// A fresh directory under the target dir for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("io-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn arange(n: usize, shape: &[usize], dtype: DType) -> Tensor {
    Tensor::arange(n, dtype, Device::Cpu)
        .unwrap()
        .reshape(shape)
        .unwrap()
}

/// The tensors of `scripts/make_safetensors_fixture.py`'s `expected()`.
fn expected() -> Vec<(String, Tensor)> {
    let t = |v: &[f64], shape: &[usize], dtype| Tensor::from_vec(v, shape, dtype, Device::Cpu);
    vec![
        ("arange".into(), arange(6, &[2, 3], DType::F32)),
        (
            "scaled".into(),
            t(&[-0.5, -0.25, 0.0, 0.25], &[4], DType::F32).unwrap(),
        ),
        (
            "double".into(),
            t(&[0.0, 1.0 / 3.0, 2.0 / 3.0], &[3], DType::F64).unwrap(),
        ),
        ("scalar".into(), t(&[3.5], &[], DType::F32).unwrap()),
        (
            "down.0.conv.weight".into(),
            t(
                &[-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0],
                &[2, 2, 2, 1],
                DType::F32,
            )
            .unwrap(),
        ),
    ]
}

fn assert_same(name: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.shape(), want.shape(), "{name}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{name}: dtype");
    assert_eq!(got.to_vec_f64(), want.to_vec_f64(), "{name}: values");
}

#[test]
fn reads_file_written_by_pytorch() {
    let loaded = load(TORCH_WRITTEN, Device::Cpu).unwrap();
    for (name, want) in expected() {
        assert_same(&name, loaded.get(&name).unwrap(), &want);
    }
    assert_eq!(
        loaded.metadata,
        HashMap::from([
            ("format".to_string(), "pt".to_string()),
            (
                "producer".to_string(),
                "scripts/make_safetensors_fixture.py".to_string()
            ),
        ])
    );
}

#[test]
fn widens_half_precision_from_pytorch() {
    let loaded = load(TORCH_WRITTEN, Device::Cpu).unwrap();
    let half = loaded.get("half").unwrap();
    assert_eq!(half.dtype(), DType::F32);
    assert_eq!(
        half.to_vec_f64(),
        [-1.0, 0.5, 65504.0, 2f64.powi(-24)] // 6e-8 rounds to the f16 subnormal 2^-24
    );
    let bhalf = loaded.get("bhalf").unwrap();
    assert_eq!(bhalf.dtype(), DType::F32);
    assert_eq!(
        bhalf.to_vec_f64(),
        [-1.0, 0.5, 3.00405527047391e38, 0.333984375]
    );
}

#[test]
fn round_trip_keeps_values_dtypes_and_metadata() {
    let dir = scratch("round-trip");
    let path = dir.join("model.safetensors");
    let mut tensors = expected();
    // A non-contiguous view is written as its logical (row-major) values.
    let transposed = arange(6, &[2, 3], DType::F64).transpose(0, 1).unwrap();
    tensors.push(("transposed".into(), transposed.clone()));
    tensors.push((
        "tiny".into(),
        Tensor::from_vec(&[1e-300, -f64::MAX], &[2], DType::F64, Device::Cpu).unwrap(),
    ));
    let meta = HashMap::from([("step".to_string(), "1234".to_string())]);
    save(&path, &tensors, &meta).unwrap();
    let loaded = load(&path, Device::Cpu).unwrap();
    assert_eq!(loaded.metadata, meta);
    assert_eq!(loaded.tensors.len(), tensors.len());
    for (name, want) in &tensors {
        assert_same(name, loaded.get(name).unwrap(), want);
    }
    assert_eq!(loaded.get("transposed").unwrap().shape(), &[3, 2]);
}

#[test]
fn round_trip_with_empty_metadata() {
    let path = scratch("empty-meta").join("x.safetensors");
    let t = vec![("x".to_string(), arange(4, &[4], DType::F32))];
    save(&path, &t, &HashMap::new()).unwrap();
    let loaded = load(&path, Device::Cpu).unwrap();
    assert!(loaded.metadata.is_empty());
    assert_same("x", loaded.get("x").unwrap(), &t[0].1);
}

#[test]
fn write_replaces_existing_file_whole_and_leaves_no_temp_file() {
    let dir = scratch("atomic");
    let path = dir.join("ckpt.safetensors");
    let big = vec![("big".to_string(), arange(1000, &[1000], DType::F64))];
    save(&path, &big, &HashMap::new()).unwrap();
    let small = vec![("small".to_string(), arange(3, &[3], DType::F32))];
    save(&path, &small, &HashMap::new()).unwrap();

    // Only the final file is left in the directory: no `.tmp` leftovers.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["ckpt.safetensors"]);
    // The old, longer file was replaced, not overwritten in place: no tail
    // of it survives and only the new tensor is there.
    let loaded = load(&path, Device::Cpu).unwrap();
    assert_eq!(loaded.tensors.len(), 1);
    assert_same("small", loaded.get("small").unwrap(), &small[0].1);
    let bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(bytes.len(), 8 + header_len + 3 * 4);
}

#[test]
fn failed_write_names_path_and_keeps_old_file() {
    let dir = scratch("failed-write");
    let path = dir.join("ckpt.safetensors");
    let t = vec![("x".to_string(), arange(3, &[3], DType::F32))];
    save(&path, &t, &HashMap::new()).unwrap();
    // Duplicate names are refused before anything is written.
    let dup = vec![t[0].clone(), t[0].clone()];
    let err = save(&path, &dup, &HashMap::new()).unwrap_err().to_string();
    assert!(
        err.contains("ckpt.safetensors") && err.contains("'x'"),
        "{err}"
    );
    assert_same(
        "x",
        load(&path, Device::Cpu).unwrap().get("x").unwrap(),
        &t[0].1,
    );
    // A rename that fails (the target is a directory) cleans up its temp file.
    let blocked = dir.join("blocked.safetensors");
    std::fs::create_dir(&blocked).unwrap();
    let err = save(&blocked, &t, &HashMap::new()).unwrap_err().to_string();
    assert!(err.contains("blocked.safetensors"), "{err}");
    assert!(!dir.join("blocked.safetensors.tmp").exists());
    // A directory that does not exist: the error names the target path.
    let missing_dir = dir.join("no-such-dir").join("a.safetensors");
    let err = save(&missing_dir, &t, &HashMap::new()).unwrap_err();
    assert!(
        matches!(&err, Error::Io { path, .. } if path.contains("no-such-dir")),
        "{err}"
    );
}

#[test]
fn missing_file_is_an_error_naming_the_path() {
    let path = scratch("missing").join("nope.safetensors");
    let err = load(&path, Device::Cpu).expect_err("must fail");
    assert!(
        matches!(&err, Error::Io { path: p, .. } if p.ends_with("nope.safetensors")),
        "{err}"
    );
    assert!(err.to_string().contains("nope.safetensors"), "{err}");
}

#[test]
fn truncated_or_corrupt_file_is_an_error_naming_the_path() {
    let dir = scratch("corrupt");
    let good = std::fs::read(TORCH_WRITTEN).unwrap();
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "truncated-data.safetensors",
            good[..good.len() - 5].to_vec(),
        ),
        ("truncated-header.safetensors", good[..20].to_vec()),
        ("empty.safetensors", Vec::new()),
        (
            "garbage.safetensors",
            b"this is not a safetensors file".to_vec(),
        ),
    ];
    for (name, bytes) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = load(&path, Device::Cpu).expect_err("must fail");
        assert!(err.to_string().contains(name), "{name}: {err}");
    }
}

#[test]
fn get_unknown_name_lists_what_the_file_has() {
    let loaded = load(TORCH_WRITTEN, Device::Cpu).unwrap();
    let err = loaded.get("nope").expect_err("must fail").to_string();
    assert!(err.contains("nope") && err.contains("arange"), "{err}");
}

/// Not run in CI: writes the file `scripts/make_safetensors_fixture.py
/// --check` verifies with PyTorch (see that script's docstring).
#[test]
#[ignore]
fn write_file_for_pytorch_check() {
    let path = std::env::var("NOISEGRAD_TORCH_CHECK")
        .expect("set NOISEGRAD_TORCH_CHECK to the file to write");
    let meta = HashMap::from([
        ("writer".to_string(), "noisegrad".to_string()),
        ("note".to_string(), "interop check".to_string()),
    ]);
    save(&path, &expected(), &meta).unwrap();
    println!("wrote {path}");
}

/// Saves `tensors` with one metadata key and returns the file's bytes.
fn saved_bytes(path: &std::path::Path, tensors: &[(String, Tensor)]) -> Vec<u8> {
    let meta = HashMap::from([
        ("b".to_string(), "2".to_string()),
        ("a".to_string(), "1".to_string()),
        ("c".to_string(), "3".to_string()),
    ]);
    save(path, tensors, &meta).unwrap();
    std::fs::read(path).unwrap()
}

#[test]
fn identical_saves_give_identical_bytes_whatever_the_tensor_order() {
    let dir = scratch("reproducible");
    let tensors = expected();
    let first = saved_bytes(&dir.join("a.safetensors"), &tensors);
    let mut reversed = tensors.clone();
    reversed.reverse();
    for _ in 0..5 {
        assert_eq!(saved_bytes(&dir.join("b.safetensors"), &reversed), first);
    }
    let loaded = load(dir.join("a.safetensors"), Device::Cpu).unwrap();
    assert!(!loaded.metadata.contains_key(CHECKSUM_KEY));
    assert_eq!(loaded.metadata.len(), 3);
}

#[test]
fn flipped_byte_is_a_checksum_error_naming_tensor_and_file() {
    let dir = scratch("flipped");
    let path = dir.join("model.safetensors");
    let t = vec![(
        "w".to_string(),
        Tensor::from_vec(&[0.5, 0.25, -1.0, 2.0], &[4], DType::F32, Device::Cpu).unwrap(),
    )];
    let mut bytes = saved_bytes(&path, &t);
    let n = bytes.len();
    bytes[n - 3] ^= 0x01; // a mantissa bit of the last value: still finite
    std::fs::write(&path, &bytes).unwrap();
    let err = load(&path, Device::Cpu).expect_err("must fail").to_string();
    assert_eq!(
        err,
        format!(
            "checksum mismatch in tensor 'w' of {}: the file is corrupt",
            path.display()
        )
    );
}

#[test]
fn non_finite_value_is_an_error_naming_the_tensor() {
    let dir = scratch("nan");
    let path = dir.join("model.safetensors");
    let t = vec![(
        "layer.weight".to_string(),
        Tensor::from_vec(&[0.5, f64::NAN], &[2], DType::F32, Device::Cpu).unwrap(),
    )];
    save(&path, &t, &HashMap::new()).unwrap();
    let err = load(&path, Device::Cpu).expect_err("must fail").to_string();
    assert!(
        err.contains("'layer.weight'") && err.contains("NaN") && err.contains("model.safetensors"),
        "{err}"
    );
}

#[test]
fn huge_weight_is_refused_by_check_weights_but_not_in_opt_tensors() {
    let dir = scratch("huge");
    let path = dir.join("model.safetensors");
    let big = Tensor::from_vec(&[1.0, 2e6], &[2], DType::F64, Device::Cpu).unwrap();
    let t = vec![
        ("opt.step.w".to_string(), big.clone()),
        ("ok".to_string(), arange(2, &[2], DType::F32)),
    ];
    save(&path, &t, &HashMap::new()).unwrap();
    let loaded = load(&path, Device::Cpu).unwrap();
    loaded.check_weights(&path).unwrap();
    save(&path, &[("ema.w".to_string(), big)], &HashMap::new()).unwrap();
    let loaded = load(&path, Device::Cpu).unwrap();
    let err = loaded
        .check_weights(&path)
        .expect_err("must fail")
        .to_string();
    assert!(err.contains("'ema.w'") && err.contains("2e6"), "{err}");
}

#[test]
fn changed_metadata_is_a_checksum_error() {
    let dir = scratch("meta");
    let path = dir.join("model.safetensors");
    let bytes = saved_bytes(&path, &expected());
    let mut bytes = bytes;
    let at = bytes
        .windows(7)
        .position(|w| w == b"\"a\":\"1\"")
        .expect("metadata a=1 in the header");
    bytes[at + 5] = b'7';
    std::fs::write(&path, &bytes).unwrap();
    let err = load(&path, Device::Cpu).expect_err("must fail").to_string();
    assert!(err.contains("metadata") && err.contains("corrupt"), "{err}");
}

#[test]
fn reserved_checksum_key_is_refused_on_save() {
    let path = scratch("reserved").join("x.safetensors");
    let meta = HashMap::from([(CHECKSUM_KEY.to_string(), "{}".to_string())]);
    let err = save(&path, &expected(), &meta).expect_err("must fail");
    assert!(err.to_string().contains(CHECKSUM_KEY), "{err}");
}
