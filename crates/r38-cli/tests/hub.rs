//! `hf://` weight names and `r38 card`, offline, against a Hugging Face cache laid out by the
//! test (no network: every child runs with HF_HUB_OFFLINE=1).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const HASH_MAIN: &str = "0123456789abcdef0123456789abcdef01234567";
const HASH_V1: &str = "89abcdef0123456789abcdef0123456789abcdef";

fn fixture(case: &str, file: &str) -> PathBuf {
    r38_tests::fixtures_dir().join(case).join(file)
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("r38-hub-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// How the child finds the cache.
#[derive(Clone, Copy)]
enum CacheVar {
    /// HF_HUB_CACHE=<cache>.
    HubCache,
    /// HF_HOME=<home>, cache at <home>/hub.
    Home,
}

/// `r38 args` with only the given cache variables, offline, and HOME pointing away from the
/// user's own cache.
fn r38(args: &[&str], var: CacheVar, root: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_r38"));
    cmd.args(args)
        .env_remove("HF_HOME")
        .env_remove("HF_HUB_CACHE")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("HF_ENDPOINT")
        .env("HOME", root.join("nohome"))
        .env("HF_HUB_OFFLINE", "1");
    match var {
        CacheVar::HubCache => cmd.env("HF_HUB_CACHE", root.join("hub")),
        CacheVar::Home => cmd.env("HF_HOME", root),
    };
    cmd.output().expect("the r38 binary runs")
}

fn ok(args: &[&str], var: CacheVar, root: &Path) -> String {
    let out = r38(args, var, root);
    assert!(
        out.status.success(),
        "r38 {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str], var: CacheVar, root: &Path, needles: &[&str]) {
    let out = r38(args, var, root);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "r38 {args:?} should fail");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "r38 {args:?}: `{n}` not in:\n{stderr}");
    }
}

/// The A1 classifier fixture converted to safetensors (once per test process).
fn converted() -> PathBuf {
    static ONCE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let out = tmp("a1_cls.safetensors");
        let status = Command::new(env!("CARGO_BIN_EXE_r38"))
            .args([
                "convert",
                fixture("a1_cls", "weights.params").to_str().unwrap(),
            ])
            .arg(&out)
            .arg("--overwrite")
            .status()
            .unwrap();
        assert!(status.success());
        out
    })
    .clone()
}

/// `<root>/hub/models--owner--repo` with refs/main and refs/v1, each snapshot holding
/// `model.safetensors` (v1 also under `sub/dir/`).
fn cache_root(name: &str) -> PathBuf {
    let root = tmp(name);
    let repo = root.join("hub/models--owner--repo");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), HASH_MAIN).unwrap();
    std::fs::write(repo.join("refs/v1"), format!("{HASH_V1}\n")).unwrap();
    let main = repo.join("snapshots").join(HASH_MAIN);
    let v1 = repo.join("snapshots").join(HASH_V1);
    std::fs::create_dir_all(&main).unwrap();
    std::fs::create_dir_all(v1.join("sub/dir")).unwrap();
    let src = converted();
    std::fs::copy(&src, main.join("model.safetensors")).unwrap();
    std::fs::copy(&src, v1.join("v1.safetensors")).unwrap();
    std::fs::copy(&src, v1.join("sub/dir/model.safetensors")).unwrap();
    root
}

#[test]
fn inspect_and_forward_from_the_cache() {
    for (var, name) in [
        (CacheVar::HubCache, "cache-hub"),
        (CacheVar::Home, "cache-home"),
    ] {
        let root = cache_root(name);
        let text = ok(
            &["inspect", "hf://owner/repo/model.safetensors"],
            var,
            &root,
        );
        assert!(text.contains(HASH_MAIN), "{text}");
        assert!(text.contains("classifier"), "{text}");
        let out = root.join("out.npy");
        ok(
            &[
                "forward",
                "--weights",
                "hf://owner/repo/model.safetensors",
                "--input",
                fixture("a1_cls", "input.npy").to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
                "--overwrite",
            ],
            var,
            &root,
        );
        let err = r38_tests::relative_error(
            &r38_data::npy::read_npy(&out).unwrap(),
            &r38_data::npy::read_npy(fixture("a1_cls", "output.npy")).unwrap(),
        );
        assert!(err <= r38_tests::PARITY_TOLERANCE, "relative error {err:e}");
    }
}

#[test]
fn revisions_and_sub_paths() {
    let root = cache_root("revisions");
    let var = CacheVar::HubCache;
    let text = ok(
        &["inspect", "hf://owner/repo/v1.safetensors@v1"],
        var,
        &root,
    );
    assert!(text.contains(HASH_V1), "{text}");
    let text = ok(
        &["inspect", "hf://owner/repo/sub/dir/model.safetensors@v1"],
        var,
        &root,
    );
    assert!(text.contains("sub/dir/model.safetensors"), "{text}");
    // A commit hash as the revision needs no ref.
    let by_hash = format!("hf://owner/repo/model.safetensors@{HASH_MAIN}");
    ok(&["inspect", &by_hash], var, &root);
    // v1.safetensors exists only at v1, not at main.
    fails(
        &["inspect", "hf://owner/repo/v1.safetensors"],
        var,
        &root,
        &[
            "HF_HUB_OFFLINE",
            "owner/repo",
            "v1.safetensors",
            "revision main",
        ],
    );
}

#[test]
fn offline_misses_and_bad_names_are_clear_errors() {
    let root = cache_root("misses");
    let var = CacheVar::HubCache;
    let repo_dir = root.join("hub/models--owner--repo");
    fails(
        &["inspect", "hf://owner/repo/missing.safetensors@v2"],
        var,
        &root,
        &[
            "not in the Hugging Face cache",
            "HF_HUB_OFFLINE",
            "repo owner/repo",
            "file missing.safetensors",
            "revision v2",
            repo_dir.to_str().unwrap(),
        ],
    );
    fails(
        &[
            "forward",
            "--weights",
            "hf://other/repo/model.safetensors",
            "--input",
            fixture("a1_cls", "input.npy").to_str().unwrap(),
            "--output",
            root.join("o.npy").to_str().unwrap(),
        ],
        CacheVar::Home,
        &root,
        &["repo other/repo", "models--other--repo"],
    );
    for bad in [
        "hf://owner/repo",
        "hf://owner/repo/m@",
        "hf://own er/repo/m",
    ] {
        fails(&["inspect", bad], var, &root, &["hf://OWNER/REPO/PATH"]);
    }
}

#[test]
fn card_for_a_converted_file() {
    let root = cache_root("card");
    let src = converted();
    let md5 =
        r38_model::weights::md5_hex(&std::fs::read(fixture("a1_cls", "weights.params")).unwrap());
    let card = ok(
        &["card", src.to_str().unwrap(), "--repo", "me/resnet38"],
        CacheVar::HubCache,
        &root,
    );
    assert!(card.starts_with("---\n"), "{card}");
    let front = card.split("---\n").nth(1).unwrap();
    for key in [
        "license:",
        "library_name: r38",
        "pipeline_tag: image-classification",
        "tags:",
        "\"resnet38\"",
    ] {
        assert!(
            front.contains(key),
            "`{key}` not in the front matter:\n{front}"
        );
    }
    for text in [
        &md5[..],
        "weights.params",
        "Wider or Deeper",
        "Pattern Recognition",
        "van den Hengel",
        "pages   = {119--133}",
        "r38 classify --weights hf://me/resnet38/a1_cls.safetensors",
        "0.485",
        "output stride | 32",
    ] {
        assert!(card.contains(text), "`{text}` not in the card:\n{card}");
    }
    // Not a released file: no published metrics.
    assert!(!front.contains("model-index"), "{front}");

    // A file whose metadata names a released file gets the authors' results.
    let file = r38_model::weights::load(&src).unwrap();
    let mut meta = file.metadata.clone();
    meta.insert(
        "r38.released".into(),
        "ilsvrc-cls_rna-a1_cls1000_ep-0001.params".into(),
    );
    let released = tmp("released.safetensors");
    r38_model::weights::save_safetensors(&released, &file.tensors, &meta).unwrap();
    let card = ok(
        &["card", released.to_str().unwrap()],
        CacheVar::HubCache,
        &root,
    );
    for text in [
        "datasets:",
        "imagenet-1k",
        "model-index:",
        "value: 19.54",
        "value: 4.75",
        "hf://OWNER/REPO/released.safetensors",
    ] {
        assert!(card.contains(text), "`{text}` not in the card:\n{card}");
    }

    // Also through hf://, from the cache.
    let card = ok(
        &["card", "hf://owner/repo/model.safetensors"],
        CacheVar::HubCache,
        &root,
    );
    assert!(card.contains(&md5), "{card}");

    // Without r38 metadata: a clear error pointing at `r38 convert`.
    fails(
        &[
            "card",
            fixture("a1_cls", "weights.params").to_str().unwrap(),
        ],
        CacheVar::HubCache,
        &root,
        &["no r38 metadata", "r38 convert"],
    );
}
