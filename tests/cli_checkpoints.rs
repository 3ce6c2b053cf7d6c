//! The built binary on damaged checkpoints: a flipped byte, a NaN or an
//! implausible weight and missing optimizer state are errors naming the
//! tensor and file; a resumed run's log holds each step once; identical
//! runs write identical checkpoints; `--resume` refuses other settings
//! unless `--override` names them.

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

/// `noisegrad train` for `steps` steps of the smallest model into `run`
/// (batch 2 unless `extra` names another).
fn train(run: &Path, steps: u64, extra: &[&str]) -> Output {
    let batch: &[&str] = match extra.contains(&"--batch-size") {
        true => &[],
        false => &["--batch-size", "2"],
    };
    Command::new(env!("CARGO_BIN_EXE_noisegrad"))
        .args(["train", "--ch", "8", "--sample-steps", "1"])
        .args(batch)
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

/// `--resume` must fail with every phrase of `want` in its message.
fn assert_resume_refused(out: &Output, want: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for w in want {
        assert!(err.contains(w), "missing '{w}' in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn resume_refuses_other_settings_naming_each_unless_overridden() {
    let (run, ckpt) = trained("settings", 2);
    let before = std::fs::read(&ckpt).unwrap();
    let out = train(
        &run,
        3,
        &[
            "--resume",
            "--batch-size",
            "4",
            "--seed",
            "1",
            "--lr",
            "0.01",
        ],
    );
    assert_resume_refused(
        &out,
        &[
            "cannot resume: this command's settings differ from the checkpoint's",
            "--batch-size: checkpoint 2, this run 4",
            "--seed: checkpoint 0, this run 1",
            "--lr: checkpoint 0.001, this run 0.01",
            "--override",
        ],
    );
    let out = train(
        &run,
        3,
        &[
            "--resume",
            "--predict",
            "v",
            "--schedule",
            "cosine",
            "--no-flip",
        ],
    );
    assert_resume_refused(
        &out,
        &[
            "--predict: checkpoint eps, this run v",
            "--schedule: checkpoint linear, this run cosine",
            "--no-flip: checkpoint false, this run true",
        ],
    );
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/fashion-mnist-sample");
    let out = train(&run, 3, &["--resume", "--data", data.to_str().unwrap()]);
    assert_resume_refused(&out, &["--data: checkpoint embedded, this run"]);
    // A fixed setting cannot be overridden at all.
    let out = train(&run, 3, &["--resume", "--override", "seed", "--seed", "1"]);
    assert_resume_refused(&out, &["--override seed: --seed cannot change on resume"]);
    let out = train(&run, 3, &["--resume", "--override", "learning-rate"]);
    assert_resume_refused(&out, &["--override learning-rate: no such setting"]);
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        before,
        "a refused resume wrote"
    );
    // Named in --override, lr and batch size change; the checkpoint then
    // records the new values, which a plain --resume repeats.
    let changed = [
        "--resume",
        "--override",
        "lr,batch-size",
        "--lr",
        "0.01",
        "--batch-size",
        "4",
    ];
    let out = train(&run, 3, &changed);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = train(&run, 4, &["--resume", "--lr", "0.01", "--batch-size", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = train(&run, 5, &["--resume"]);
    assert_resume_refused(&out, &["--lr: checkpoint 0.01, this run 0.001"]);
}

#[test]
fn override_needs_resume() {
    let run = scratch("override-alone");
    let out = train(&run, 1, &["--override", "lr"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--resume"), "{}", stderr(&out));
}

#[test]
fn autoencoder_resume_refuses_other_settings() {
    let run = scratch("ae-settings");
    let ae = |steps: &str, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_noisegrad"))
            .args(["train-autoencoder", "--ch", "8", "--batch-size", "2"])
            .args(["--test-images", "2", "--steps", steps, "--out"])
            .arg(&run)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = ae("2", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ae(
        "3",
        &["--resume", "--kl-weight", "0.5", "--z-channels", "8"],
    );
    assert_resume_refused(
        &out,
        &[
            "--kl-weight: checkpoint 0.000001, this run 0.5",
            "--z-channels: checkpoint 4, this run 8",
        ],
    );
    let out = ae(
        "3",
        &["--resume", "--override", "kl-weight", "--kl-weight", "0.5"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}
