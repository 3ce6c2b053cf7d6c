//! The built binary on damaged checkpoints: a flipped byte, a NaN or an
//! implausible weight and missing optimizer state are errors naming the
//! tensor and file; a resumed run's log holds each step once; identical
//! runs write identical checkpoints.

use noisegrad::engine::io::{load, save};
use noisegrad::engine::{Device, Tensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("noisegrad-cli-ckpt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `noisegrad train` for `steps` steps of the smallest model into `run`.
fn train(run: &Path, steps: u64, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_noisegrad"))
        .args([
            "train",
            "--batch-size",
            "2",
            "--ch",
            "8",
            "--sample-steps",
            "1",
        ])
        .args(["--steps", &steps.to_string(), "--out"])
        .arg(run)
        .args(extra)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn trained(name: &str, steps: u64) -> (PathBuf, PathBuf) {
    let run = scratch(name);
    let out = train(&run, steps, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ckpt = run.join("checkpoint.safetensors");
    (run, ckpt)
}

/// `sample` from `ckpt`: must fail with a message containing every `want`.
fn assert_sample_fails(ckpt: &Path, want: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_noisegrad"))
        .args(["sample", "--n", "1", "--steps", "1", "--checkpoint"])
        .arg(ckpt)
        .arg("--out")
        .arg(ckpt.with_file_name("s.png"))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "sampling a damaged file succeeded");
    assert!(!err.contains("panicked"), "{err}");
    for w in want {
        assert!(err.contains(w), "expected {w:?} in: {err}");
    }
}

/// Rewrites `ckpt` with `f` applied to its tensors (keeping the metadata).
fn rewrite(ckpt: &Path, f: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let mut loaded = load(ckpt, Device::Cpu).unwrap();
    f(&mut loaded.tensors);
    save(ckpt, &loaded.tensors, &loaded.metadata).unwrap();
}

/// Replaces the first element of the first model weight with `v`; its name.
fn poison(ckpt: &Path, v: f64) -> String {
    let mut name = String::new();
    rewrite(ckpt, |ts| {
        let (n, t) = ts
            .iter_mut()
            .find(|(n, _)| {
                n.ends_with(".weight") && !n.starts_with("ema.") && !n.starts_with("opt.")
            })
            .unwrap();
        let mut values = t.to_vec_f64();
        values[0] = v;
        *t = Tensor::from_vec(&values, t.shape(), t.dtype(), Device::Cpu).unwrap();
        name = n.clone();
    });
    name
}

#[test]
fn damaged_checkpoints_are_refused_naming_tensor_and_file() {
    let (_run, ckpt) = trained("damaged", 2);
    let good = std::fs::read(&ckpt).unwrap();

    // A flipped bit in the last tensor's data.
    let mut bytes = good.clone();
    let n = bytes.len();
    bytes[n - 2] ^= 0x10;
    std::fs::write(&ckpt, &bytes).unwrap();
    assert_sample_fails(
        &ckpt,
        &["checksum mismatch in tensor '", "the file is corrupt"],
    );

    std::fs::write(&ckpt, &good).unwrap();
    let name = poison(&ckpt, f64::NAN);
    assert_sample_fails(
        &ckpt,
        &[
            &format!("tensor '{name}' holds NaN"),
            "checkpoint.safetensors",
        ],
    );

    std::fs::write(&ckpt, &good).unwrap();
    let name = poison(&ckpt, 3e6);
    assert_sample_fails(
        &ckpt,
        &[
            &format!("tensor '{name}' holds 3e6"),
            "checkpoint.safetensors",
        ],
    );
}

#[test]
fn resume_without_optimizer_state_is_refused_but_sampling_works() {
    let (run, ckpt) = trained("no-opt", 2);
    rewrite(&ckpt, |ts| ts.retain(|(n, _)| !n.starts_with("opt.")));
    let out = train(&run, 3, &["--resume"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "resumed without optimizer state");
    assert!(
        err.contains("cannot resume: the optimizer state is incomplete") && err.contains("opt.m."),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_noisegrad"))
        .args(["sample", "--n", "1", "--steps", "1", "--checkpoint"])
        .arg(&ckpt)
        .arg("--out")
        .arg(run.join("s.png"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The steps of log.jsonl, in order.
fn logged_steps(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            l.split("\"step\":")
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

#[test]
fn resume_truncates_the_log_and_identical_runs_write_identical_checkpoints() {
    let (run_a, ckpt_a) = trained("log-a", 3);
    let (_run_b, ckpt_b) = trained("log-b", 3);
    assert!(
        std::fs::read(&ckpt_a).unwrap() == std::fs::read(&ckpt_b).unwrap(),
        "two identical runs wrote different checkpoints"
    );
    // Pretend the run went on to step 5 after its last checkpoint (at 3),
    // then resume it to 4: steps 4 and 5 of the lost run must go.
    let mut log = std::fs::read_to_string(run_a.join("log.jsonl")).unwrap();
    log.push_str("{\"step\":4,\"loss\":9.0}\n{\"step\":5,\"loss\":9.0}\n");
    std::fs::write(run_a.join("log.jsonl"), log).unwrap();
    let out = train(&run_a, 4, &["--resume"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(logged_steps(&run_a), vec![1, 2, 3, 4]);
}
