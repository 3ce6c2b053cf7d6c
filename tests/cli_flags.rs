//! The built binary on bad flags and on SIGTERM: zero and out-of-range
//! values are refused when the flags are parsed (exit 2, the flag named),
//! and SIGTERM stops training with the checkpoint Ctrl-C would write.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn noisegrad() -> Command {
    Command::new(env!("CARGO_BIN_EXE_noisegrad"))
}

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("noisegrad-cli-flags-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn zero_and_out_of_range_flags_are_refused_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["train", "--ckpt-every", "0"], "--ckpt-every"),
        (&["train", "--batch-size", "0"], "--batch-size"),
        (&["train", "--steps", "0"], "--steps"),
        (&["train", "--sample-steps", "0"], "--sample-steps"),
        (&["sample", "--checkpoint", "c", "--n", "0"], "--n"),
        (&["sample", "--checkpoint", "c", "--eta", "1.5"], "--eta"),
        (&["sample", "--checkpoint", "c", "--eta=-0.1"], "--eta"),
        (&["eval", "--checkpoint", "c", "--images", "0"], "--images"),
        (
            &["eval", "--checkpoint", "c", "--batch-size", "0"],
            "--batch-size",
        ),
        (&["bench-train", "--steps", "0"], "--steps"),
        (&["bench-train", "--batch-size", "0"], "--batch-size"),
    ];
    for (args, flag) in cases {
        let out = noisegrad().args(*args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?} should name {flag}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn sigterm_saves_the_checkpoint_like_ctrl_c() {
    let dir = scratch("sigterm");
    let run = dir.join("run");
    let mut child = noisegrad()
        .args([
            "train",
            "--steps",
            "100000",
            "--ckpt-every",
            "100000",
            "--out",
        ])
        .arg(&run)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for a few logged steps, then send SIGTERM.
    let log = run.join("log.jsonl");
    let started = Instant::now();
    while std::fs::read_to_string(&log).map_or(0, |s| s.lines().count()) < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "training never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    // Stopped, not killed, and not "success": the run did not finish.
    assert_eq!(
        status.code(),
        Some(130),
        "SIGTERM must save and exit 130: {status}"
    );
    let last_step = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .last()
        .and_then(|l| {
            l.split("\"step\":")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .unwrap();
    let info = noisegrad()
        .args(["info", "--checkpoint"])
        .arg(run.join("checkpoint.safetensors"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    let saved: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("step")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no step in info output: {text}"));
    assert_eq!(
        saved, last_step,
        "the checkpoint must hold every logged step"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
