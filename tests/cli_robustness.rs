//! The built binary on sizes that cannot fit, Ctrl-C during sampling, two
//! trainers on one run folder and a closed stdout: each ends with a clear
//! message and a non-zero status, never a panic, an abort or a hang.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn noisegrad() -> Command {
    Command::new(env!("CARGO_BIN_EXE_noisegrad"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("noisegrad-robust-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Trains a 1-step tiny run into `run`, asserting that it succeeds.
fn train_one_step(run: &Path) {
    let out = noisegrad()
        .args([
            "train",
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--sample-steps",
            "1",
            "--out",
        ])
        .arg(run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 1-step tiny class-conditional run's checkpoint, trained once.
fn tiny_checkpoint() -> &'static Path {
    static CKPT: OnceLock<PathBuf> = OnceLock::new();
    CKPT.get_or_init(|| {
        let run = scratch("tiny").join("run");
        train_one_step(&run);
        run.join("checkpoint.safetensors")
    })
}

/// Asserts exit status `code`, `phrase` in stderr, and no panic or abort.
fn assert_fails(out: &Output, code: i32, phrase: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(err.contains(phrase), "stderr should say {phrase:?}: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("memory allocation"),
        "{err}"
    );
}

#[test]
fn huge_batch_size_is_refused_naming_the_flag() {
    let dir = scratch("batch");
    let out = noisegrad()
        .args(["train", "--batch-size", "100000000000", "--out"])
        .arg(dir.join("run"))
        .output()
        .unwrap();
    assert_fails(&out, 1, "--batch-size 100000000000 cannot fit");
}

#[test]
fn huge_channel_count_is_refused_naming_the_field() {
    let dir = scratch("ch");
    let out = noisegrad()
        .args(["train", "--ch", "1000000", "--out"])
        .arg(dir.join("run"))
        .output()
        .unwrap();
    assert_fails(&out, 1, "ch 1000000 is outside 1..=4096");
}

#[test]
fn huge_sample_count_is_refused_naming_the_flag() {
    let out = noisegrad()
        .args(["sample", "--n", "100000000", "--checkpoint"])
        .arg(tiny_checkpoint())
        .output()
        .unwrap();
    assert_fails(&out, 1, "--n 100000000 cannot fit");
}

/// Rewrites the `model_config` metadata of a safetensors file (8-byte
/// little-endian header length, then the JSON header) with `edit`, and
/// drops noisegrad's checksums if `strip_checksums` (as a file written by
/// another tool, which has none).
fn rewrite_model_config(
    src: &Path,
    dst: &Path,
    strip_checksums: bool,
    edit: impl Fn(&mut serde_json::Value),
) {
    let bytes = std::fs::read(src).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta = &mut header["__metadata__"]["model_config"];
    let mut cfg: serde_json::Value = serde_json::from_str(meta.as_str().unwrap()).unwrap();
    edit(&mut cfg);
    *meta = serde_json::Value::String(cfg.to_string());
    if strip_checksums {
        header["__metadata__"]
            .as_object_mut()
            .unwrap()
            .remove("noisegrad.crc32");
    }
    let mut text = header.to_string().into_bytes();
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(dst, out).unwrap();
}

#[test]
fn checkpoint_with_huge_image_size_is_refused_before_allocating() {
    let dir = scratch("image-size");
    // With noisegrad's checksums kept, the edit is caught as corruption...
    let tampered = dir.join("tampered.safetensors");
    rewrite_model_config(tiny_checkpoint(), &tampered, false, |c| {
        c["image_size"] = 1048576.into()
    });
    let out = noisegrad()
        .args(["sample", "--checkpoint"])
        .arg(&tampered)
        .output()
        .unwrap();
    assert_fails(&out, 1, "checksum mismatch in its metadata");
    // ...and without them the config check refuses it before allocating.
    let bad = dir.join("bad.safetensors");
    rewrite_model_config(tiny_checkpoint(), &bad, true, |c| {
        c["image_size"] = 1048576.into()
    });
    for cmd in ["sample", "eval"] {
        let out = noisegrad()
            .args([cmd, "--checkpoint"])
            .arg(&bad)
            .output()
            .unwrap();
        assert_fails(&out, 1, "image_size 1048576 is outside 1..=4096");
        assert!(String::from_utf8_lossy(&out.stderr).contains("bad.safetensors"));
    }
}

/// Whether `pid` has a handler installed for SIGINT (bit 1 of SigCgt).
fn catches_sigint(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| m & 2 != 0)
}

#[test]
fn sigint_stops_sampling_promptly_with_status_130() {
    let dir = scratch("sigint");
    // 1000 DDPM steps on 64 images: far longer than the few seconds allowed.
    let child = noisegrad()
        .args(["sample", "--sampler", "ddpm", "--n", "64", "--checkpoint"])
        .arg(tiny_checkpoint())
        .arg("--out")
        .arg(dir.join("s.png"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !catches_sigint(child.id()) {
        assert!(started.elapsed() < Duration::from_secs(60), "no handler");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "took {:?}",
        sent.elapsed()
    );
    assert_fails(&out, 130, "interrupted");
    assert!(
        !dir.join("s.png").exists(),
        "an interrupted run writes no grid"
    );
}

#[test]
fn second_trainer_on_a_locked_out_fails_naming_the_pid() {
    let dir = scratch("lock");
    let run = dir.join("run");
    let mut first = noisegrad()
        .args(["train", "--steps", "100000", "--out"])
        .arg(&run)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let log = run.join("log.jsonl");
    let started = Instant::now();
    while std::fs::read_to_string(&log).map_or(0, |s| s.lines().count()) < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "training never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let second = noisegrad()
        .args(["train", "--out"])
        .arg(&run)
        .output()
        .unwrap();
    let pid = first.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    first.wait().unwrap();
    assert_fails(&second, 1, &format!("another noisegrad run (PID {pid})"));
}

#[test]
fn stale_lock_file_of_a_dead_process_does_not_block() {
    let dir = scratch("stale");
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join(".lock"), "999999999\n").unwrap();
    train_one_step(&run);
    let pid = std::fs::read_to_string(run.join(".lock")).unwrap();
    assert_ne!(pid.trim(), "999999999", "the lock holds the new PID");
}

/// `noisegrad ARGS | true`, noisegrad starting after `true` has exited, so
/// every write meets a closed pipe; returns its status and stderr.
fn into_closed_pipe(args: &str) -> (String, String) {
    let script = format!(
        "(sleep 0.5; '{}' {args}; echo \"status=$?\" >&2) | true",
        env!("CARGO_BIN_EXE_noisegrad")
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let status = err
        .lines()
        .find_map(|l| l.strip_prefix("status="))
        .unwrap_or("")
        .to_string();
    (status, err)
}

#[test]
fn printing_to_a_closed_pipe_ends_quietly() {
    let info = format!("info --checkpoint '{}'", tiny_checkpoint().display());
    for args in ["--help", info.as_str()] {
        let (status, err) = into_closed_pipe(args);
        // 141 = 128 + SIGPIPE: the default action, as for other tools.
        assert_eq!(status, "141", "{args}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args}: {err}"
        );
    }
}
