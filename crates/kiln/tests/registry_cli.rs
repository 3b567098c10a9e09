//! `kiln registry` driven through the real binary against Debian's `docker-registry` on
//! loopback: the JSON decisions, dry run, `--apply` and a second `--apply`, policy files, a
//! registry refusing deletes, and secret hygiene (a token file readable by others is refused;
//! the token never appears in any output).

#![allow(clippy::unwrap_used)]

#[path = "../../registry/tests/common/mod.rs"]
mod common;

use common::*;
use serde_json::Value;
use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

const USER: &str = "kiln";
/// Distinctive, so any leak into output is found by a plain substring search.
const TOKEN: &str = "TOKEN-zq8Vd1st1nct1ve-7731";

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `kiln registry <args>` with a clean registry environment plus `env`, at debug log level
/// (more log lines that could leak a secret), and checks the token appears nowhere.
fn kiln(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command.arg("registry").args(args).env("KILN_LOG", "debug");
    for (key, _) in std::env::vars() {
        if key.starts_with("ARTIFACTS_") || key.starts_with("OCI") || key.starts_with("KILN_") {
            command.env_remove(key);
        }
    }
    command.env("KILN_LOG", "debug");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    let run = Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(
        !run.stdout.contains(TOKEN) && !run.stderr.contains(TOKEN),
        "the token leaked:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    run
}

fn secret_file(dir: &Path, mode: u32) -> String {
    let path = dir.join(format!("token-{mode:o}"));
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.display().to_string()
}

fn json(run: &Run) -> Value {
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

/// `(digest, action)` of every image in a `--json` answer.
fn actions(answer: &Value) -> Vec<(String, String)> {
    answer["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["digest"].as_str().unwrap().to_string(),
                i["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn prune_dry_run_apply_and_again() {
    let Some(reg) = TestRegistry::start(Some((USER, TOKEN))).await else {
        return;
    };
    let host = reg.host.as_str();
    let user = Some((USER, TOKEN));
    let old = TestImage::created("old", "amd64", "2024-01-01T00:00:00Z");
    let mid = TestImage::created("mid", "amd64", "2024-02-01T00:00:00Z");
    let release = TestImage::created("release", "amd64", "2023-06-01T00:00:00Z");
    let new = TestImage::created("new", "amd64", "2024-03-01T00:00:00Z");
    push(host, "kiln/app", "old", &old, user).await;
    push(host, "kiln/app", "mid", &mid, user).await;
    push(host, "kiln/app", "v1.0", &release, user).await;
    push(host, "kiln/app", "new", &new, user).await;
    push(host, "kiln/app", "latest", &new, user).await;
    push(host, "kiln/base", "1", &old, user).await;

    let dir = tempfile::tempdir().unwrap();
    let file = secret_file(dir.path(), 0o600);
    let url = format!("http://{host}");
    let env = [("ARTIFACTS_REGISTRY_USERNAME", USER)];
    let prune = |extra: &[&str]| {
        let mut args = vec![
            "prune",
            "--registry",
            &url,
            "--password-file",
            &file,
            "--keep-last",
            "1",
            "--exempt",
            "v*",
            "--quota-bytes",
            "1MB",
            "--warn-bytes",
            "10kB",
        ];
        args.extend_from_slice(extra);
        kiln(&args, &env)
    };

    let dry = json(&prune(&["--json"]));
    let expected = |old_action: &str| {
        vec![
            (new.digest(), "keep".to_string()),
            (mid.digest(), "delete".to_string()),
            (old.digest(), old_action.to_string()),
            (release.digest(), "keep".to_string()),
            (old.digest(), "keep".to_string()),
        ]
    };
    assert_eq!(actions(&dry), expected("delete"));
    let first = &dry["images"][0];
    assert_eq!(first["repository"], "kiln/app");
    assert_eq!(first["tags"], serde_json::json!(["latest", "new"]));
    assert_eq!(first["created"], "2024-03-01T00:00:00Z");
    let new_bytes: usize = new.blobs().iter().map(|b| b.len()).sum();
    assert_eq!(first["bytes"], new_bytes as u64);
    assert_eq!(dry["images"][3]["reason"], "tag v1.0 is exempt (v*)");
    assert_eq!(dry["applied"], false);
    assert_eq!(dry["quota"]["used_bytes"], reg.blob_bytes_on_disk());
    assert_eq!(dry["quota"]["status"], "warn");

    // The table says the same, with the quota line, and deletes nothing either.
    let table = prune(&[]);
    assert!(table.ok, "{}", table.stderr);
    assert!(
        table
            .stdout
            .contains("dry run: 2 of 5 images would be deleted"),
        "{}",
        table.stdout
    );
    assert!(table.stdout.contains("registry bytes:"), "{}", table.stdout);
    assert!(table.stdout.contains("WARNING"), "{}", table.stdout);
    assert_eq!(actions(&json(&prune(&["--json"]))), expected("delete"));

    let applied = json(&prune(&["--apply", "--json"]));
    assert_eq!(applied["deleted"], 2);
    let after = json(&prune(&["--json"]));
    assert_eq!(
        actions(&after),
        [
            (new.digest(), "keep".to_string()),
            (release.digest(), "keep".to_string()),
            (old.digest(), "keep".to_string()),
        ]
    );
    // The same image in another repository is another image: kiln/base:1 is still there.
    assert_eq!(after["images"][2]["repository"], "kiln/base");
    let again = prune(&["--apply"]);
    assert!(again.ok, "{}", again.stderr);
    assert!(
        again.stdout.contains("deleted 0 of 3 images"),
        "{}",
        again.stdout
    );
    assert!(again.stdout.contains("registry bytes:"), "{}", again.stdout);

    let repos = kiln(
        &["repos", "--registry", &url, "--password-file", &file],
        &env,
    );
    assert!(repos.ok, "{}", repos.stderr);
    let lines: Vec<&str> = repos.stdout.lines().collect();
    assert!(lines[0].starts_with("REPOSITORY"), "{}", repos.stdout);
    assert!(
        lines[1].starts_with("kiln/app") && lines[1].contains(" 2 "),
        "{}",
        repos.stdout
    );
}

#[tokio::test]
async fn policy_files_apply_per_repository() {
    let Some(reg) = TestRegistry::start(None).await else {
        return;
    };
    let host = reg.host.as_str();
    let a1 = TestImage::created("a1", "amd64", "2024-01-01T00:00:00Z");
    let a2 = TestImage::created("a2", "amd64", "2024-02-01T00:00:00Z");
    for repo in ["kiln/templates/a", "other/b"] {
        push(host, repo, "1", &a1, None).await;
        push(host, repo, "2", &a2, None).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[defaults]\nkeep_last = 5\n[quota]\nquota_bytes = \"500MB\"\nwarn_bytes = \"350MB\"\n[[repository]]\nname = \"kiln/templates/*\"\nkeep_last = 1\n",
    )
    .unwrap();
    let url = format!("http://{host}");
    let policy = policy.display().to_string();
    let answer = json(&kiln(
        &["prune", "--registry", &url, "--policy", &policy, "--json"],
        &[],
    ));
    assert_eq!(
        actions(&answer),
        [
            (a2.digest(), "keep".to_string()),
            (a1.digest(), "delete".to_string()),
            (a2.digest(), "keep".to_string()),
            (a1.digest(), "keep".to_string()),
        ]
    );
    assert_eq!(answer["quota"]["quota_bytes"], 500_000_000);
    assert_eq!(answer["quota"]["status"], "ok");

    // --repo narrows the run; flags and a policy file do not mix.
    let only = json(&kiln(
        &[
            "prune",
            "--registry",
            &url,
            "--repo",
            "other/*",
            "--keep-last",
            "0",
            "--json",
        ],
        &[],
    ));
    assert_eq!(
        actions(&only).iter().filter(|(_, a)| a == "delete").count(),
        2
    );
    let mixed = kiln(
        &[
            "prune",
            "--registry",
            &url,
            "--policy",
            &policy,
            "--keep-last",
            "1",
        ],
        &[],
    );
    assert!(!mixed.ok);
    let bad = kiln(
        &[
            "prune",
            "--registry",
            &url,
            "--exempt",
            "[x",
            "--quota-bytes",
            "lots",
            "--warn-bytes",
            "1x",
        ],
        &[],
    );
    assert!(!bad.ok);
    assert!(bad.stderr.contains("3 problem(s)"), "{}", bad.stderr);
}

#[tokio::test]
async fn a_registry_without_deletes_gives_a_clear_message() {
    let Some(reg) = TestRegistry::start_with(None, false).await else {
        return;
    };
    let image = TestImage::created("x", "amd64", "2024-01-01T00:00:00Z");
    push(&reg.host, "kiln/app", "1", &image, None).await;
    let url = format!("http://{}", reg.host);
    let run = kiln(
        &["prune", "--registry", &url, "--keep-last", "0", "--apply"],
        &[],
    );
    assert!(!run.ok);
    assert!(
        run.stderr.contains("refuses to delete manifests")
            && run.stderr.contains("storage.delete.enabled"),
        "{}",
        run.stderr
    );
    // The plan and the quota were printed before the refused delete.
    assert!(run.stdout.contains("registry bytes:"), "{}", run.stdout);
}

#[tokio::test]
async fn token_files_readable_by_others_are_refused_and_tokens_never_printed() {
    let Some(reg) = TestRegistry::start(Some((USER, TOKEN))).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let open = secret_file(dir.path(), 0o644);
    let url = format!("http://{}", reg.host);
    let env = [("ARTIFACTS_REGISTRY_USERNAME", USER)];
    for command in ["prune", "repos", "check"] {
        let run = kiln(
            &[command, "--registry", &url, "--password-file", &open],
            &env,
        );
        assert!(!run.ok, "{command} accepted a 0644 token file");
        assert!(
            run.stderr
                .contains("readable by group or others (mode 0644)"),
            "{}",
            run.stderr
        );
    }
    // The same through OCIR_PASSWORD_FILE, with every other missing OCIR setting listed too.
    let run = kiln(
        &["check"],
        &[
            ("ARTIFACTS_REGISTRY_PROVIDER", "OCI_OCIR"),
            ("OCIR_PASSWORD_FILE", &open),
        ],
    );
    assert!(!run.ok);
    for key in [
        "OCI_REGION",
        "OCI_NAMESPACE",
        "OCI_CONTAINER_REPOSITORY_NAME",
        "OCIR_USERNAME",
        "OCIR_PASSWORD_FILE",
    ] {
        assert!(run.stderr.contains(key), "{key}: {}", run.stderr);
    }
    assert!(run.stderr.contains("5 problem(s)"), "{}", run.stderr);

    // A wrong password is refused without being shown; the right one from the environment works.
    let wrong = kiln(
        &["check", "--registry", &url],
        &[
            ("ARTIFACTS_REGISTRY_USERNAME", USER),
            ("ARTIFACTS_REGISTRY_PASSWORD", "not-the-token"),
        ],
    );
    assert!(!wrong.ok);
    assert!(!wrong.stderr.contains("not-the-token"), "{}", wrong.stderr);
    assert!(
        wrong.stderr.contains("refused the credentials"),
        "{}",
        wrong.stderr
    );
    let right = kiln(
        &["check", "--registry", &url],
        &[
            ("ARTIFACTS_REGISTRY_USERNAME", USER),
            ("ARTIFACTS_REGISTRY_PASSWORD", TOKEN),
        ],
    );
    assert!(right.ok, "{}", right.stderr);
    assert!(
        right.stdout.contains("ok: 0 repositories visible"),
        "{}",
        right.stdout
    );
    let private = secret_file(dir.path(), 0o600);
    let check = kiln(
        &["check", "--registry", &url, "--password-file", &private],
        &env,
    );
    assert!(check.ok, "{}", check.stderr);
}
