//! Secrets at rest: what a copy of the database shows (the SQLite file and its WAL, a SQL
//! dump, `pg_dump`), the key file, a wrong master key, the upgrade from plaintext secrets and
//! `pushbridge secrets rotate`. `copies` reads a database the way someone holding a copy of
//! it would.

mod copies;

use std::sync::Arc;

use pushbridge::clock::now_ms;
use pushbridge::config::Config;
use pushbridge::secrets::{MasterKey, SecretsConfig};
use pushbridge::signature::{sign, Scheme};
use pushbridge::store::NewApp;
use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::{test_secrets, Db, TestApp, OPERATOR_KEY};
use copies::{assert_absent, database_copies, sqlite_file};

/// A user-chosen secret of a generic webhook source.
const CHOSEN_SECRET: &str = "chosen-generic-secret-0123456789";

/// The secrets an app gets through the API: its user-auth secret (made at creation and
/// replaced), a chosen and a generated source secret, one added later, and its callback
/// secret. Returns them, with the name of the source that verifies with `CHOSEN_SECRET`.
async fn secrets_through_the_api(t: &TestApp, app: &NewApp) -> Vec<String> {
    let key = Some(app.server_key.as_str());
    let mut secrets = vec![app.user_auth_secret.clone()];
    let (status, chosen) = t
        .call(
            Method::POST,
            "/v1/sources",
            key,
            Some(json!({"name": "chosen", "scheme": "generic", "secrets": [CHOSEN_SECRET]})),
        )
        .await;
    assert_eq!(status, 201, "{chosen}");
    secrets.push(CHOSEN_SECRET.to_string());
    let (status, generated) = t
        .call(
            Method::POST,
            "/v1/sources",
            key,
            Some(json!({"name": "generated", "scheme": "standard_webhooks"})),
        )
        .await;
    assert_eq!(status, 201, "{generated}");
    secrets.push(text(&generated["secrets"][0]["secret"]));
    let (status, added) = t
        .call(Method::POST, "/v1/sources/generated/secrets", key, None)
        .await;
    assert_eq!(status, 201, "{added}");
    secrets.push(text(&added["secret"]));
    let (status, callback) = t
        .call(
            Method::PUT,
            "/v1/app/callback",
            key,
            Some(json!({"url": "https://backend.example.com/hooks"})),
        )
        .await;
    assert_eq!(status, 200, "{callback}");
    secrets.push(text(&callback["secret"]));
    let (status, rotated) = t
        .call(
            Method::POST,
            "/v1/app/user-auth",
            key,
            Some(json!({"rotate_secret": true})),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    secrets.push(text(&rotated["secret"]));
    secrets
}

fn text(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_string()
}

/// Posts a webhook to `source`, signed with the generic scheme under `secret`.
async fn post_signed(t: &TestApp, app_id: &str, source: &str, secret: &str) -> u16 {
    let id = format!("evt_{}", uuid::Uuid::new_v4().simple());
    let body = json!({"id": id, "type": "order.paid"}).to_string();
    let headers = sign(
        Scheme::Generic,
        secret,
        body.as_bytes(),
        &id,
        now_ms() / 1000,
    )
    .expect("a valid secret");
    let mut req = t
        .client
        .post(t.url(&format!("/v1/webhooks/{app_id}/{source}")))
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in &headers {
        req = req.header(k.as_str(), v.as_str());
    }
    req.send().await.expect("send").status().as_u16()
}

async fn no_copy_of_the_database_shows_a_secret(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let secrets = secrets_through_the_api(&t, &app).await;
    let url = t.running().state.config.database_url.clone();
    for (what, bytes) in database_copies(&url).await {
        assert_absent(&what, &bytes, &secrets);
    }

    // Everything that needs the secrets still has them.
    assert_eq!(
        post_signed(&t, &app.app.id, "chosen", CHOSEN_SECRET).await,
        202
    );
    assert_eq!(
        post_signed(&t, &app.app.id, "chosen", "wrong-secret-0123456789").await,
        401
    );
    let (_, user_auth) = t
        .call(
            Method::GET,
            "/v1/app/user-auth",
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!(text(&user_auth["secret"]), secrets[secrets.len() - 1]);
    let target = t
        .store()
        .callback_target(&app.app.id)
        .await
        .expect("read")
        .expect("a callback");
    assert_eq!(target.secret, secrets[secrets.len() - 2]);
    t.shutdown().await;
}

/// Raw stored values of every secret column, to compare before and after.
async fn stored_secrets(url: &str) -> Vec<(String, Option<String>)> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.expect("connect");
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    for sql in [
        "SELECT id, user_auth_secret FROM apps ORDER BY id",
        "SELECT app_id, secret FROM event_endpoints ORDER BY app_id, id",
        "SELECT id, secrets FROM webhook_sources ORDER BY id",
    ] {
        out.extend(sqlx::query_as(sql).fetch_all(&pool).await.expect("read"));
    }
    pool.close().await;
    out
}

fn config_on(url: &str, secrets: SecretsConfig) -> Config {
    Config {
        database_url: url.to_string(),
        operator_key: Some(OPERATOR_KEY.to_string()),
        secrets,
        ..Config::default()
    }
}

/// Starts the bridge on `url` with `secrets`, as `serve` would: `Err` when it refuses.
async fn try_start(url: &str, secrets: SecretsConfig) -> anyhow::Result<pushbridge::Running> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    pushbridge::start(config_on(url, secrets), listener).await
}

fn only(key: &MasterKey) -> SecretsConfig {
    SecretsConfig {
        master_key: Some(key.clone()),
        previous_keys: Vec::new(),
    }
}

/// A fresh database that outlives the bridges started on it, and its URL.
async fn lasting_database(db: &Db) -> (Arc<tempfile::TempDir>, String) {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let url = db.fresh_url(dir.path()).await;
    (dir, url)
}

async fn a_wrong_master_key_is_refused_at_start_up_and_changes_nothing(db: Db) {
    let (dir, url) = lasting_database(&db).await;
    let t = TestApp::spawn_on(url.clone(), dir.clone(), |_| {}).await;
    let app = t.new_app().await;
    let secrets = secrets_through_the_api(&t, &app).await;
    t.shutdown().await;
    let before = stored_secrets(&url).await;

    let wrong = MasterKey::generate();
    let err = match try_start(&url, only(&wrong)).await {
        Ok(_) => panic!("a wrong master key must be refused"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(err.contains("secrets.master_key"), "{err}");
    assert!(err.contains(&wrong.id().to_string()), "{err}");
    assert!(!err.contains(&app.user_auth_secret), "{err}");
    assert_eq!(
        stored_secrets(&url).await,
        before,
        "nothing was overwritten"
    );

    // The right key, even as a previous one, opens them.
    let right = match test_secrets(&url).master_key {
        Some(k) => k,
        None => {
            let file = format!("{}.key", sqlite_file(&url).display());
            MasterKey::from_base64(&std::fs::read_to_string(file).expect("key file")).expect("key")
        }
    };
    let both = SecretsConfig {
        master_key: Some(wrong),
        previous_keys: vec![right],
    };
    let running = try_start(&url, both)
        .await
        .expect("starts with the old key as previous");
    let user_auth = running
        .state
        .store
        .user_auth(&app.app.id)
        .await
        .expect("read")
        .expect("app");
    assert_eq!(&user_auth.secret, secrets.last().expect("user-auth secret"));
    running.shutdown().await.expect("clean shutdown");
    assert_eq!(
        stored_secrets(&url).await,
        before,
        "no start-up re-seals a sealed value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_without_a_key_makes_a_private_key_file_and_reuses_it() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, url) = lasting_database(&Db::Sqlite).await;
    let key_file = dir.path().join("bridge.db.key");
    let t = TestApp::spawn_on(url.clone(), dir.clone(), |_| {}).await;
    let mode = std::fs::metadata(&key_file)
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    let key = std::fs::read_to_string(&key_file).expect("key file");
    assert_eq!(
        MasterKey::from_base64(&key).expect("a key").id(),
        t.store().sealing_key_id()
    );
    let app = t.new_app().await;
    t.shutdown().await;

    let t = TestApp::spawn_on(url.clone(), dir.clone(), |_| {}).await;
    assert_eq!(
        std::fs::read_to_string(&key_file).expect("key file"),
        key,
        "reused"
    );
    let user_auth = t
        .store()
        .user_auth(&app.app.id)
        .await
        .expect("opens")
        .expect("app");
    assert_eq!(user_auth.secret, app.user_auth_secret);
    t.shutdown().await;

    // A key file others can read is refused, and so is a database without its key file.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = format!(
        "{:#}",
        try_start(&url, SecretsConfig::default())
            .await
            .err()
            .expect("refused")
    );
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::remove_file(&key_file).expect("remove");
    let err = format!(
        "{:#}",
        try_start(&url, SecretsConfig::default())
            .await
            .err()
            .expect("refused")
    );
    assert!(err.contains("restore the key file"), "{err}");
    assert!(
        !key_file.exists(),
        "the key made for the refused start is not kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_without_a_master_key_refuses_to_start_and_says_how_to_set_one() {
    let Some(db) = Db::postgres() else { return };
    let (_dir, url) = lasting_database(&db).await;
    let err = format!(
        "{:#}",
        try_start(&url, SecretsConfig::default())
            .await
            .err()
            .expect("refused")
    );
    assert!(err.contains("secrets.master_key"), "{err}");
    assert!(err.contains("PUSHBRIDGE_SECRETS__MASTER_KEY"), "{err}");
    assert!(err.contains("openssl rand -base64 32"), "{err}");
}

/// The secrets of an app written in plaintext, as versions before encryption at rest did.
const OLD_USER_AUTH: &str = "pbua_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const OLD_CALLBACK: &str = "whsec_b2xkIGNhbGxiYWNrIHNlY3JldCBieXRlcw==";
const OLD_SOURCE: &str = "old-generic-source-secret-0123456789";

/// A database at the current schema holding an app, a key, a callback and a source whose
/// secrets are stored in plaintext, exactly as the previous version wrote them.
async fn prepare_plaintext(db: &Db, url: &str) {
    use sha2::{Digest, Sha256};
    sqlx::any::install_default_drivers();
    let (dir, url) = match db {
        Db::Sqlite => ("migrations/sqlite", format!("{url}?mode=rwc")),
        Db::Postgres(_) => ("migrations/postgres", url.to_string()),
    };
    let pool = sqlx::AnyPool::connect(&url).await.expect("connect");
    sqlx::migrate::Migrator::new(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
        .await
        .expect("migrations")
        .run(&pool)
        .await
        .expect("migrate");
    sqlx::query(
        "INSERT INTO apps (id, name, created_at, user_auth_secret, client_user_ids, \
         callback_url, callback_secret) VALUES ('app_old', 'old', 1, $1, 'verified', \
         'https://backend.example.com/hooks', $2)",
    )
    .bind(OLD_USER_AUTH)
    .bind(OLD_CALLBACK)
    .execute(&pool)
    .await
    .expect("app");
    sqlx::query(
        "INSERT INTO api_keys (id, app_id, kind, secret_hash, created_at) \
         VALUES ('oldserver', 'app_old', 'server', $1, 1)",
    )
    .bind(hex::encode(Sha256::digest(b"s3cret")))
    .execute(&pool)
    .await
    .expect("key");
    sqlx::query(
        "INSERT INTO webhook_sources (id, app_id, name, scheme, secrets, allowed_cidrs, \
         created_at, updated_at) VALUES ('src_old', 'app_old', 'orders', 'generic', $1, '[]', 1, 1)",
    )
    .bind(json!([{"id": "sec_old", "secret": OLD_SOURCE, "created_at": 1}]).to_string())
    .execute(&pool)
    .await
    .expect("source");
    pool.close().await;
}

async fn plaintext_secrets_are_sealed_once_at_start_up(db: Db) {
    let (dir, url) = lasting_database(&db).await;
    prepare_plaintext(&db, &url).await;
    let t = TestApp::spawn_on(url.clone(), dir.clone(), |_| {}).await;
    let sealed = stored_secrets(&url).await;
    assert_eq!(sealed.len(), 3);
    for (row, value) in &sealed {
        let value = value.as_deref().expect("a value");
        assert!(value.starts_with("sealed:v1:"), "{row}: {value}");
    }
    let old = [OLD_USER_AUTH, OLD_CALLBACK, OLD_SOURCE].map(String::from);
    for (what, bytes) in database_copies(&url).await {
        // Old row versions stay in PostgreSQL's files until VACUUM FULL; its dump is clean.
        assert_absent(&what, &bytes, &old);
    }

    // The bridge goes on using them as before.
    let server = "pb_server_oldserver_s3cret";
    assert_eq!(post_signed(&t, "app_old", "orders", OLD_SOURCE).await, 202);
    let (_, user_auth) = t
        .call(Method::GET, "/v1/app/user-auth", Some(server), None)
        .await;
    assert_eq!(user_auth["secret"], OLD_USER_AUTH);
    let target = t
        .store()
        .callback_target("app_old")
        .await
        .expect("read")
        .expect("callback");
    assert_eq!(target.secret, OLD_CALLBACK);
    t.shutdown().await;

    // Once: a later start finds nothing to seal and leaves every value as it is.
    let t = TestApp::spawn_on(url.clone(), dir.clone(), |_| {}).await;
    assert_eq!(stored_secrets(&url).await, sealed);
    t.shutdown().await;
}

/// Runs `pushbridge secrets rotate` on `url` with `env` and returns its output.
fn cli_rotate(dir: &std::path::Path, url: &str, env: &[(&str, String)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pushbridge"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PUSHBRIDGE_")) {
        cmd.env_remove(k);
    }
    cmd.args(["secrets", "rotate"])
        .current_dir(dir)
        .env("PUSHBRIDGE_DATABASE_URL", url)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run pushbridge secrets rotate")
}

async fn rotation_seals_everything_under_the_new_key_and_the_old_one_can_go(db: Db) {
    let (dir, url) = lasting_database(&db).await;
    let old = MasterKey::generate();
    let t = TestApp::spawn_on(url.clone(), dir.clone(), |c| c.secrets = only(&old)).await;
    let app = t.new_app().await;
    let secrets = secrets_through_the_api(&t, &app).await;
    t.shutdown().await;

    let new = MasterKey::generate();
    let out = cli_rotate(
        dir.path(),
        &url,
        &[
            ("PUSHBRIDGE_SECRETS__MASTER_KEY", new.to_base64()),
            (
                "PUSHBRIDGE_SECRETS__PREVIOUS_KEYS",
                format!("[\"{}\"]", old.to_base64()),
            ),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("sealed 4 secrets again under key {}", new.id())),
        "{said}"
    );
    for (row, value) in stored_secrets(&url).await {
        let value = value.expect("a value");
        assert!(
            value.starts_with(&format!("sealed:v1:{}:", new.id())),
            "{row}: {value}"
        );
    }
    let again = cli_rotate(
        dir.path(),
        &url,
        &[("PUSHBRIDGE_SECRETS__MASTER_KEY", new.to_base64())],
    );
    assert!(again.status.success(), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stdout).contains("sealed 0 secrets"));

    // The new key alone opens everything; the old one alone no longer does.
    let t = TestApp::spawn_on(url.clone(), dir.clone(), |c| c.secrets = only(&new)).await;
    assert_eq!(
        post_signed(&t, &app.app.id, "chosen", CHOSEN_SECRET).await,
        202
    );
    let user_auth = t
        .store()
        .user_auth(&app.app.id)
        .await
        .expect("opens")
        .expect("app");
    assert_eq!(&user_auth.secret, secrets.last().expect("secret"));
    t.shutdown().await;
    assert!(
        try_start(&url, only(&old)).await.is_err(),
        "the old key is not enough any more"
    );
}

backend_tests!(
    no_copy_of_the_database_shows_a_secret,
    a_wrong_master_key_is_refused_at_start_up_and_changes_nothing,
    plaintext_secrets_are_sealed_once_at_start_up,
    rotation_seals_everything_under_the_new_key_and_the_old_one_can_go,
);
