//! Data-parallel training under `mpirun -np 2` on localhost, against the
//! one-process run: same losses and the same checkpoint (to the float
//! tolerance of another summation order), resume, resharding, a killed rank,
//! and the bad inputs every rank must refuse.
//!
//! Runs the MPI-enabled release binary `.ci/run` builds (`cargo build
//! --release --features mpi`, or $NOISEGRAD_MPI_BIN). Without it or without
//! `mpirun` the MPI tests print "skipped: ..."; with NOISEGRAD_REQUIRE_MPI=1
//! (CI) they fail instead.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The MPI-enabled binary, or why the MPI tests cannot run.
fn mpi_binary() -> Result<PathBuf, String> {
    let bin = std::env::var_os("NOISEGRAD_MPI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/noisegrad"));
    if !bin.exists() {
        return Err(format!(
            "{} not found (build it with `cargo build --release --features mpi`)",
            bin.display()
        ));
    }
    let version = Command::new(&bin).arg("--version").output();
    if !version.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("features: mpi")) {
        return Err(format!(
            "{} was built without MPI (build it with `cargo build --release --features mpi`)",
            bin.display()
        ));
    }
    match Command::new("mpirun").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => return Err("mpirun not found (apt-get install openmpi-bin libopenmpi-dev)".into()),
    }
    Ok(bin)
}

/// One MPI job at a time: the machine has 2 cores and each job wants both.
static ONE_JOB: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The binary, or None after printing why (panics when CI requires MPI).
fn binary_or_skip(test: &str) -> Option<PathBuf> {
    match mpi_binary() {
        Ok(b) => Some(b),
        Err(why) if std::env::var("NOISEGRAD_REQUIRE_MPI").as_deref() == Ok("1") => {
            panic!("{test}: NOISEGRAD_REQUIRE_MPI=1 but {why}")
        }
        Err(why) => {
            println!("skipped: {test}: {why}");
            None
        }
    }
}

/// `mpirun -np <np> bin args...` (np 0: the binary alone), on one thread per
/// process, as root if need be.
fn launch(bin: &Path, np: usize, args: &[&str]) -> Command {
    let mut c = if np == 0 {
        Command::new(bin)
    } else {
        let mut c = Command::new("mpirun");
        c.args(["--oversubscribe", "-np", &np.to_string()]).arg(bin);
        c
    };
    c.args(args)
        .env("RAYON_NUM_THREADS", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1");
    c
}

/// Waits for `child` at most `secs` (killing it after), with its output.
fn finish(mut child: Child, secs: u64) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(secs) {
            child.kill().ok();
            panic!("the run did not finish in {secs} s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

fn run(mut c: Command) -> Output {
    finish(
        c.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        240,
    )
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn train_args(out: &Path, steps: u64, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "train",
        "--steps",
        &steps.to_string(),
        "--batch-size",
        "16",
        "--dropout",
        "0",
        "--sample-steps",
        "1",
        "--warmup",
        "2",
        "--ckpt-every",
        "2",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(out.display().to_string());
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn train(bin: &Path, np: usize, out: &Path, steps: u64, extra: &[&str]) -> Output {
    let args = train_args(out, steps, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(launch(bin, np, &args));
    assert!(o.status.success(), "np {np} failed:\n{}", text(&o));
    o
}

fn losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["loss"].as_f64().unwrap()
        })
        .collect()
}

fn fresh(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("noisegrad-ddp-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    d
}

/// Largest |a − b| over all tensors of two checkpoints (same names).
fn checkpoint_distance(a: &Path, b: &Path) -> f64 {
    use noisegrad::engine::{Device, io};
    let a = io::load(a.join("checkpoint.safetensors"), Device::Cpu).unwrap();
    let b = io::load(b.join("checkpoint.safetensors"), Device::Cpu).unwrap();
    assert_eq!(a.tensors.len(), b.tensors.len());
    let mut worst = 0f64;
    for (name, t) in &a.tensors {
        let u = &b.tensors.iter().find(|(n, _)| n == name).unwrap().1;
        for (x, y) in t.to_vec_f64().iter().zip(u.to_vec_f64()) {
            worst = worst.max((x - y).abs());
        }
    }
    assert_eq!(a.metadata["step"], b.metadata["step"]);
    worst
}

fn assert_close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        // f32 sums in another order: a few ulps of the loss.
        assert!(
            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
            "{got:?} vs {want:?}"
        );
    }
}

#[test]
fn two_processes_train_the_one_process_run_and_resume() {
    let Some(bin) = binary_or_skip("two_processes_train_the_one_process_run_and_resume") else {
        return;
    };
    let _one = ONE_JOB.lock().unwrap_or_else(|e| e.into_inner());
    let (one, two) = (fresh("one"), fresh("two"));
    train(&bin, 0, &one, 4, &[]);
    let o = train(&bin, 2, &two, 4, &[]);
    assert!(
        text(&o).contains("data parallel: 2 processes (mpi), 8 images each"),
        "{}",
        text(&o)
    );
    // Only rank 0 printed the run's summary.
    assert_eq!(
        text(&o).matches("training tiny U-Net").count(),
        1,
        "{}",
        text(&o)
    );
    assert_close(&losses(&two), &losses(&one));
    let d = checkpoint_distance(&one, &two);
    assert!(d < 1e-5, "checkpoints after 4 steps differ by {d}");
    // Resume both to step 6: the continuation matches too.
    train(&bin, 0, &one, 6, &["--resume"]);
    train(&bin, 2, &two, 6, &["--resume"]);
    assert_close(&losses(&two), &losses(&one));
    assert!(checkpoint_distance(&one, &two) < 1e-5);
    // Sampling a 2-process checkpoint needs no world of processes.
    let sampled = run(launch(
        &bin,
        0,
        &[
            "sample",
            "--checkpoint",
            &two.join("checkpoint.safetensors").display().to_string(),
            "--steps",
            "2",
            "--n",
            "4",
            "--out",
            &two.join("sampled.png").display().to_string(),
        ],
    ));
    assert!(sampled.status.success(), "{}", text(&sampled));
    // A 2-process checkpoint on 1 process: refused, then allowed by --reshard.
    let args = train_args(&two, 8, &["--resume"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let refused = run(launch(&bin, 0, &args));
    assert!(!refused.status.success());
    let msg = text(&refused);
    assert!(
        msg.contains("written by a run on 2 process(es), this run has 1")
            && msg.contains("--reshard"),
        "{msg}"
    );
    train(&bin, 0, &two, 8, &["--resume", "--reshard"]);
    train(&bin, 0, &one, 8, &["--resume"]);
    assert_close(&losses(&two), &losses(&one));
}

#[test]
fn overlapped_all_reduce_gives_the_same_weights_as_after_backward() {
    let Some(bin) =
        binary_or_skip("overlapped_all_reduce_gives_the_same_weights_as_after_backward")
    else {
        return;
    };
    let _one = ONE_JOB.lock().unwrap_or_else(|e| e.into_inner());
    // 64 KiB buckets cut the tiny U-Net into dozens of all-reduces, so the
    // overlapped run really starts buckets while backward is still running.
    let (one, overlap, after) = (fresh("one-b"), fresh("overlap"), fresh("after"));
    let small = ["--bucket-mb", "0.0625"];
    train(&bin, 0, &one, 3, &[]);
    let overlapped = [&small[..], &["--overlap"]].concat();
    train(&bin, 2, &overlap, 3, &overlapped);
    train(&bin, 2, &after, 3, &small);
    assert_close(&losses(&overlap), &losses(&one));
    // Two ranks sum a + b whichever way the buckets are cut and started.
    assert_eq!(losses(&overlap), losses(&after));
    assert_eq!(checkpoint_distance(&overlap, &after), 0.0);
    assert!(checkpoint_distance(&overlap, &one) < 1e-5);
    // Ranks that would start their all-reduces differently are refused.
    let out_s = after.display().to_string();
    let base = ["train", "--steps", "1", "--out", &out_s];
    let mut c = launch(&bin, 1, &base);
    c.args([":", "-np", "1"])
        .arg(&bin)
        .args(base)
        .arg("--overlap");
    let mixed = run(c);
    assert!(!mixed.status.success());
    assert!(
        text(&mixed).contains("disagree on the training config"),
        "{}",
        text(&mixed)
    );
}

#[test]
fn bad_world_inputs_are_refused_on_every_rank() {
    let Some(bin) = binary_or_skip("bad_world_inputs_are_refused_on_every_rank") else {
        return;
    };
    let _one = ONE_JOB.lock().unwrap_or_else(|e| e.into_inner());
    let out = fresh("bad");
    let out_s = out.display().to_string();
    let uneven = run(launch(
        &bin,
        2,
        &[
            "train",
            "--steps",
            "1",
            "--batch-size",
            "15",
            "--out",
            &out_s,
        ],
    ));
    assert!(!uneven.status.success());
    let msg = text(&uneven);
    assert!(msg.contains("--batch-size 15 is the global batch"), "{msg}");
    assert!(
        msg.contains("must split evenly over the 2 processes"),
        "{msg}"
    );
    // Two ranks with different flags (MPMD launch): the config hash differs.
    let mut c = launch(
        &bin,
        1,
        &["train", "--steps", "1", "--seed", "1", "--out", &out_s],
    );
    c.args([":", "-np", "1"])
        .arg(&bin)
        .args(["train", "--steps", "1", "--seed", "2", "--out", &out_s]);
    let mixed = run(c);
    assert!(!mixed.status.success());
    let msg = text(&mixed);
    assert!(msg.contains("disagree on the training config"), "{msg}");
    assert!(
        msg.contains("rank 0") && msg.contains("rank 1"),
        "every rank reports it:\n{msg}"
    );
}

#[test]
fn a_killed_rank_stops_the_job_and_leaves_a_whole_checkpoint() {
    let Some(bin) = binary_or_skip("a_killed_rank_stops_the_job_and_leaves_a_whole_checkpoint")
    else {
        return;
    };
    let _one = ONE_JOB.lock().unwrap_or_else(|e| e.into_inner());
    let out = fresh("kill");
    let args = train_args(&out, 100_000, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = launch(&bin, 2, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mpirun = child.id();
    let start = Instant::now();
    while losses_so_far(&out) < 3 {
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ranks = children_of(mpirun);
    assert_eq!(ranks.len(), 2, "mpirun's children: {ranks:?}");
    let victim = *ranks.iter().max().unwrap();
    assert!(
        Command::new("kill")
            .args(["-9", &victim.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let o = finish(child, 60);
    assert!(!o.status.success(), "the job went on after a rank died");
    let msg = text(&o);
    assert!(msg.contains("signal 9") || msg.contains("Killed"), "{msg}");
    // The checkpoint is a whole one (written atomically), and resumes.
    let step: u64 = {
        let l = noisegrad::engine::io::load(
            out.join("checkpoint.safetensors"),
            noisegrad::engine::Device::Cpu,
        )
        .unwrap();
        l.metadata["step"].parse().unwrap()
    };
    assert!(step >= 2);
    train(&bin, 2, &out, step + 1, &["--resume"]);
}

fn losses_so_far(out: &Path) -> usize {
    std::fs::read_to_string(out.join("log.jsonl")).map_or(0, |t| t.lines().count())
}

/// The processes whose parent is `pid` (mpirun starts the local ranks itself).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let ppid: Option<u32> = rest.split_whitespace().nth(1).and_then(|v| v.parse().ok());
        if ppid == Some(pid) && stat.contains("(noisegrad)") {
            out.push(e.file_name().to_string_lossy().parse().unwrap());
        }
    }
    out
}

/// The default (MPI-less) binary started as an MPI rank refuses with the
/// fix, rather than training alone into the shared run folder.
#[test]
fn a_binary_without_mpi_refuses_an_mpi_launch() {
    let out = fresh("nompi");
    let o = Command::new(env!("CARGO_BIN_EXE_noisegrad"))
        .args(["train", "--steps", "1", "--out"])
        .arg(&out)
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .env("OMPI_COMM_WORLD_RANK", "1")
        .output()
        .unwrap();
    let msg = text(&o);
    if cfg!(feature = "mpi") {
        println!("skipped: a_binary_without_mpi_refuses_an_mpi_launch: this test binary has MPI");
        return;
    }
    assert!(!o.status.success());
    assert!(
        msg.contains("rank 1 of 2, but this noisegrad was built without MPI")
            && msg.contains("--features mpi"),
        "{msg}"
    );
    assert!(!out.exists(), "nothing may be written");
}
