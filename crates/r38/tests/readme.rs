//! The README's library example is `examples/quickstart.rs`, compiled with the crate's
//! examples; this keeps the two the same text.

#[test]
fn the_readme_shows_the_compiled_quickstart_example() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("examples/quickstart.rs")).unwrap();
    let Ok(readme) = std::fs::read_to_string(root.join("../../README.md")) else {
        // Packaged on its own (cargo package), the crate has no repository README.
        return;
    };
    let body = example
        .split_once("use r38::")
        .map(|(_, rest)| format!("use r38::{rest}"))
        .unwrap();
    assert!(
        readme.contains(&body),
        "README.md must show examples/quickstart.rs from its `use` line on:\n{body}"
    );
}
