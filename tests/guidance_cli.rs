//! The conditional commands from the command line: bad input gives a
//! clear error naming what was wrong (exit code 1, no panic), and
//! `sample --class all` → `score` → `info` work on tiny checkpoints.

use noisegrad::diffusion::image::Canvas;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_noisegrad"))
        .args(args)
        .output()
        .expect("the binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("panicked"), "{text}");
    (out.status.success(), text)
}

fn ok(args: &[&str]) -> String {
    let (good, text) = run(args);
    assert!(good, "{args:?} failed: {text}");
    text
}

fn fails_with(args: &[&str], phrase: &str) {
    let (good, text) = run(args);
    assert!(!good, "{args:?} should fail");
    assert!(
        text.contains(phrase),
        "{args:?}: expected '{phrase}' in: {text}"
    );
}

struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn p(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// One-step checkpoints and classifiers, made once for all tests.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("noisegrad-guidance-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = Fixture { dir };
        let cifar = "assets/cifar10-sample/cifar-10-batches-bin";
        ok(&[
            "train",
            "--steps",
            "1",
            "--sample-steps",
            "1",
            "--out",
            &f.p("cond"),
        ]);
        ok(&[
            "train",
            "--data",
            cifar,
            "--steps",
            "1",
            "--sample-steps",
            "1",
            "--out",
            &f.p("uncond"),
        ]);
        ok(&[
            "train-classifier",
            "--data",
            cifar,
            "--steps",
            "1",
            "--out",
            &f.p("cifar.safetensors"),
        ]);
        ok(&[
            "train-classifier",
            "--steps",
            "1",
            "--diffusion-steps",
            "500",
            "--out",
            &f.p("t500.safetensors"),
        ]);
        ok(&[
            "train-classifier",
            "--clean",
            "--steps",
            "2",
            "--out",
            &f.p("clean.safetensors"),
        ]);
        Canvas::new(28, 28, [128, 128, 128])
            .save_png(Path::new(&f.p("gray28.png")))
            .unwrap();
        Canvas::new(32, 32, [255, 255, 255])
            .save_png(Path::new(&f.p("white32.png")))
            .unwrap();
        f
    })
}

fn cond(f: &Fixture) -> String {
    f.p("cond/checkpoint.safetensors")
}

#[test]
fn bad_classes_are_named() {
    let f = fixture();
    let c = cond(f);
    fails_with(
        &["sample", "--checkpoint", &c, "--class", "10"],
        "--class 10 is outside 0..10",
    );
    fails_with(
        &["sample", "--checkpoint", &c, "--class", "Jacket"],
        "'Jacket' is not a class name",
    );
    let u = f.p("uncond/checkpoint.safetensors");
    fails_with(
        &["sample", "--checkpoint", &u, "--guidance", "1"],
        "--guidance needs a class-conditional checkpoint",
    );
    fails_with(
        &["sample", "--checkpoint", &u, "--class", "0"],
        "--class needs a class-conditional checkpoint or a --classifier",
    );
}

#[test]
fn classifiers_that_do_not_fit_are_refused() {
    let f = fixture();
    let c = cond(f);
    let cifar = f.p("cifar.safetensors");
    fails_with(
        &[
            "sample",
            "--checkpoint",
            &c,
            "--class",
            "0",
            "--classifier",
            &cifar,
        ],
        "trained for image size 32",
    );
    let t500 = f.p("t500.safetensors");
    fails_with(
        &[
            "sample",
            "--checkpoint",
            &c,
            "--class",
            "0",
            "--classifier",
            &t500,
        ],
        "trained for T = 500",
    );
    fails_with(
        &[
            "sample",
            "--checkpoint",
            &c,
            "--classifier",
            &c,
            "--class",
            "0",
        ],
        "not a noisegrad classifier",
    );
}

#[test]
fn bad_inpainting_inputs_are_named() {
    let f = fixture();
    let c = cond(f);
    let (gray, white) = (f.p("gray28.png"), f.p("white32.png"));
    fails_with(
        &[
            "sample",
            "--checkpoint",
            &c,
            "--inpaint",
            &white,
            "--mask",
            &gray,
        ],
        "is 32×32 but the model makes 28×28",
    );
    fails_with(
        &[
            "sample",
            "--checkpoint",
            &c,
            "--inpaint",
            &gray,
            "--mask",
            &white,
        ],
        "the mask is 32×32",
    );
    fails_with(
        &[
            "sample",
            "--checkpoint",
            &c,
            "--inpaint",
            &gray,
            "--mask",
            &gray,
        ],
        "black (0) or white (255) only, found the value 128",
    );
}

#[test]
fn sample_all_classes_then_score_and_info() {
    let f = fixture();
    let c = cond(f);
    let grid = f.p("grid.png");
    ok(&[
        "sample",
        "--checkpoint",
        &c,
        "--class",
        "all",
        "--guidance",
        "1",
        "--steps",
        "2",
        "--n",
        "20",
        "--out",
        &grid,
    ]);
    let out = ok(&[
        "score",
        "--samples",
        &grid,
        "--classifier",
        &f.p("clean.safetensors"),
    ]);
    assert!(
        out.contains("class consistency:") && out.contains("of 20 samples"),
        "{out}"
    );
    let info = ok(&["info", "--checkpoint", &c]);
    assert!(
        info.contains("9: Ankle boot") && info.contains("\"num_classes\":10"),
        "{info}"
    );
}
