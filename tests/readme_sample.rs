//! The README's ```rust example is the doctest in `src/lib.rs` (which
//! `cargo test` compiles and runs): this keeps the two texts the same.

/// The lines of the first ```rust block of `text`, with any `//! ` doc
/// prefix and rustdoc's hidden `# ` lines removed.
fn rust_block(text: &str) -> Vec<String> {
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            l.trim_start_matches("//!")
                .trim_start_matches(' ')
                .to_string()
        })
        .collect();
    let start = lines
        .iter()
        .position(|l| l == "```rust")
        .expect("a ```rust block")
        + 1;
    lines[start..]
        .iter()
        .take_while(|l| *l != "```")
        .filter(|l| !l.starts_with("# "))
        .cloned()
        .collect()
}

#[test]
fn readme_example_is_the_compiled_doctest() {
    let readme = include_str!("../README.md");
    let lib = include_str!("../src/lib.rs");
    assert_eq!(
        rust_block(readme),
        rust_block(lib),
        "README.md's ```rust example differs from the doctest in src/lib.rs: update both"
    );
}
