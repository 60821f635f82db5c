//! `pushbridge endpoints`: the same checks and the same store as `/v1/endpoints`.

use crate::harness::{open_store, test_secrets, Db};

/// Runs `pushbridge endpoints <args>` on `url` with `env`.
fn cli(
    dir: &std::path::Path,
    url: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pushbridge"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PUSHBRIDGE_")) {
        cmd.env_remove(k);
    }
    if let Some(key) = test_secrets(url).master_key {
        cmd.env("PUSHBRIDGE_SECRETS__MASTER_KEY", key.to_base64());
    }
    cmd.arg("endpoints")
        .args(args)
        .current_dir(dir)
        .env("PUSHBRIDGE_DATABASE_URL", url)
        .envs(env.iter().copied())
        .output()
        .expect("run pushbridge endpoints")
}

async fn the_cli_creates_lists_and_refuses_like_the_api(db: Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = db.fresh_url(dir.path()).await;
    let store = open_store(&url).await;
    let app = store.create_app("cli").await.expect("app").app.id;
    let refused = cli(
        dir.path(),
        &url,
        &[],
        &[
            "create",
            &app,
            "--url",
            "https://169.254.169.254/x",
            "--events",
            "device.pruned",
        ],
    );
    assert!(!refused.status.success(), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("url"), "{said}");
    let insecure = [
        ("PUSHBRIDGE_ENDPOINTS__ALLOW_INSECURE", "true"),
        (
            "PUSHBRIDGE_ENDPOINTS__ALLOWED_PRIVATE_CIDRS",
            "[\"127.0.0.0/8\"]",
        ),
    ];
    let created = cli(
        dir.path(),
        &url,
        &insecure,
        &[
            "create",
            &app,
            "--url",
            "http://127.0.0.1:9/hooks",
            "--events",
            "device.pruned,delivery.failed",
        ],
    );
    assert!(created.status.success(), "{created:?}");
    let out = String::from_utf8_lossy(&created.stdout);
    assert!(out.contains("secret whsec_"), "{out}");
    let listed = store.endpoints(&app).await.expect("endpoints");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].url, "http://127.0.0.1:9/hooks");
    assert_eq!(listed[0].events.len(), 2);
    let shown = cli(dir.path(), &url, &[], &["list", &app]);
    let out = String::from_utf8_lossy(&shown.stdout);
    assert!(
        out.contains(&listed[0].id) && !out.contains("whsec_"),
        "{out}"
    );
    store.close().await;
}

backend_tests!(the_cli_creates_lists_and_refuses_like_the_api);
