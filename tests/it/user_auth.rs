//! User identity verification: a client key (public, inside every copy of the mobile app)
//! sets or changes a device's user id only with a proof from the app's backend.

use crate::harness::{apns_token, fcm_token, user_proof, Db, TestApp};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use pushbridge::store::NewApp;
use reqwest::Method;
use serde_json::{json, Value};

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn hs256(secret: &str, claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

async fn register(t: &TestApp, key: &str, token: &str, body: Value) -> (u16, Value) {
    t.call(
        Method::PUT,
        &format!("/v1/devices/{token}"),
        Some(key),
        Some(body),
    )
    .await
}

/// The device's stored user id, read with the server key (`None` when not registered).
async fn stored_user(t: &TestApp, app: &NewApp, token: &str) -> Option<Value> {
    let (status, device) = t
        .call(
            Method::GET,
            &format!("/v1/devices/{token}"),
            Some(&app.server_key),
            None,
        )
        .await;
    (status == 200).then(|| device["user_id"].clone())
}

fn assert_refused(status: u16, body: &Value) {
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("user_auth")),
        "{body}"
    );
}

async fn a_client_key_cannot_claim_a_user_without_proof(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let token = apns_token(1);
    let (status, body) = register(
        &t,
        &app.client_key,
        &token,
        json!({"platform": "apns", "user_id": "victim"}),
    )
    .await;
    assert_refused(status, &body);
    assert_eq!(stored_user(&t, &app, &token).await, None);
    let (_, devices) = t
        .call(
            Method::GET,
            "/v1/users/victim/devices",
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!(devices["devices"], json!([]));
    t.shutdown().await;
}

async fn a_proof_for_another_user_is_refused(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let token = apns_token(2);
    let (status, body) = register(
        &t,
        &app.client_key,
        &token,
        json!({"platform": "apns", "user_id": "victim", "user_auth": user_proof(&app, "attacker")}),
    )
    .await;
    assert_refused(status, &body);
    // Another app's proof for the same user is no proof here either.
    let other = t.new_app().await;
    let (status, body) = register(
        &t,
        &app.client_key,
        &token,
        json!({"platform": "apns", "user_id": "victim", "user_auth": user_proof(&other, "victim")}),
    )
    .await;
    assert_refused(status, &body);
    assert_eq!(stored_user(&t, &app, &token).await, None);
    t.shutdown().await;
}

async fn an_hmac_proof_registers_the_user(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let token = fcm_token("hmac");
    let (status, device) = register(
        &t,
        &app.client_key,
        &token,
        json!({"platform": "fcm", "user_id": "u1", "user_auth": user_proof(&app, "u1")}),
    )
    .await;
    assert_eq!(status, 201, "{device}");
    assert_eq!(device["user_id"], "u1");
    assert!(device.get("user_auth").is_none(), "the proof is not echoed");
    assert_eq!(stored_user(&t, &app, &token).await, Some(json!("u1")));
    t.shutdown().await;
}

async fn an_hs256_jwt_proof_is_accepted(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let token = apns_token(3);
    let jwt = hs256(
        &app.user_auth_secret,
        json!({"sub": "u1", "exp": now_secs() + 600, "aud": app.app.id}),
    );
    let (status, device) = register(
        &t,
        &app.client_key,
        &token,
        json!({"platform": "apns", "user_id": "u1", "user_auth": jwt}),
    )
    .await;
    assert_eq!(status, 201, "{device}");
    // The same token does not vouch for someone else.
    let (status, body) = register(
        &t,
        &app.client_key,
        &token,
        json!({"platform": "apns", "user_id": "u2", "user_auth": jwt}),
    )
    .await;
    assert_refused(status, &body);
    assert_eq!(stored_user(&t, &app, &token).await, Some(json!("u1")));
    t.shutdown().await;
}

async fn an_es256_jwt_against_a_registered_key_is_accepted(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let pair = rcgen::KeyPair::generate().expect("P-256 key");
    let jwt = encode(
        &Header::new(Algorithm::ES256),
        &json!({"sub": "u1", "exp": now_secs() + 600}),
        &EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("signing key"),
    )
    .expect("encode");
    let token = apns_token(4);
    let body = json!({"platform": "apns", "user_id": "u1", "user_auth": jwt});
    let (status, refused) = register(&t, &app.client_key, &token, body.clone()).await;
    assert_refused(status, &refused);

    let (status, key) = t
        .call(
            Method::POST,
            "/v1/app/user-auth/keys",
            Some(&app.server_key),
            Some(json!({"algorithm": "ES256", "public_key": pair.public_key_pem()})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let (status, device) = register(&t, &app.client_key, &token, body.clone()).await;
    assert_eq!(status, 201, "{device}");
    assert_eq!(device["user_id"], "u1");

    // Removed, the key proves nothing any more.
    let key_path = format!("/v1/app/user-auth/keys/{}", key["id"].as_str().expect("id"));
    let (status, _) = t
        .call(Method::DELETE, &key_path, Some(&app.server_key), None)
        .await;
    assert_eq!(status, 204);
    let (status, refused) = register(&t, &app.client_key, &apns_token(5), body).await;
    assert_refused(status, &refused);
    t.shutdown().await;
}

async fn a_public_key_must_match_its_algorithm(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let pair = rcgen::KeyPair::generate().expect("P-256 key");
    for body in [
        json!({"algorithm": "RS256", "public_key": pair.public_key_pem()}),
        json!({"algorithm": "ES256", "public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"}),
        json!({"algorithm": "ES256", "public_key": pair.serialize_pem()}),
    ] {
        let (status, err) = t
            .call(
                Method::POST,
                "/v1/app/user-auth/keys",
                Some(&app.server_key),
                Some(body),
            )
            .await;
        assert_eq!(status, 422, "{err}");
        assert_eq!(err["error"]["field"], "public_key");
    }
    let (status, err) = t
        .call(
            Method::POST,
            "/v1/app/user-auth/keys",
            Some(&app.server_key),
            Some(json!({"algorithm": "none", "public_key": pair.public_key_pem()})),
        )
        .await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["field"], "algorithm");
    let (_, settings) = t
        .call(
            Method::GET,
            "/v1/app/user-auth",
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!(settings["public_keys"], json!([]));
    t.shutdown().await;
}

async fn an_expired_jwt_is_refused(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let jwt = hs256(
        &app.user_auth_secret,
        json!({"sub": "u1", "exp": now_secs() - 120}),
    );
    let token = apns_token(6);
    let (status, body) = register(
        &t,
        &app.client_key,
        &token,
        json!({"platform": "apns", "user_id": "u1", "user_auth": jwt}),
    )
    .await;
    assert_refused(status, &body);
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("expired")));
    assert_eq!(stored_user(&t, &app, &token).await, None);
    t.shutdown().await;
}

async fn a_jwt_valid_for_more_than_an_hour_is_refused(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let token = apns_token(7);
    for claims in [
        json!({"sub": "u1", "exp": now_secs() + 2 * 3600}),
        json!({"sub": "u1"}),
    ] {
        let jwt = hs256(&app.user_auth_secret, claims.clone());
        let (status, body) = register(
            &t,
            &app.client_key,
            &token,
            json!({"platform": "apns", "user_id": "u1", "user_auth": jwt}),
        )
        .await;
        assert_refused(status, &body);
    }
    assert_eq!(stored_user(&t, &app, &token).await, None);
    t.shutdown().await;
}

async fn rotating_the_secret_retires_the_old_proofs(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let (status, before) = t
        .call(
            Method::GET,
            "/v1/app/user-auth",
            Some(&app.server_key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(before["secret"], app.user_auth_secret.as_str());
    let (status, after) = t
        .call(
            Method::POST,
            "/v1/app/user-auth",
            Some(&app.server_key),
            Some(json!({"rotate_secret": true})),
        )
        .await;
    assert_eq!(status, 200, "{after}");
    let new_secret = after["secret"].as_str().expect("secret").to_string();
    assert_ne!(new_secret, app.user_auth_secret);
    assert!(new_secret.starts_with("pbua_"));

    let (status, body) = register(
        &t,
        &app.client_key,
        &apns_token(8),
        json!({"platform": "apns", "user_id": "u1", "user_auth": user_proof(&app, "u1")}),
    )
    .await;
    assert_refused(status, &body);
    let old_jwt = hs256(
        &app.user_auth_secret,
        json!({"sub": "u1", "exp": now_secs() + 600}),
    );
    let (status, body) = register(
        &t,
        &app.client_key,
        &apns_token(8),
        json!({"platform": "apns", "user_id": "u1", "user_auth": old_jwt}),
    )
    .await;
    assert_refused(status, &body);

    let rotated = NewApp {
        user_auth_secret: new_secret,
        ..app.clone()
    };
    let (status, device) = register(
        &t,
        &app.client_key,
        &apns_token(8),
        json!({"platform": "apns", "user_id": "u1", "user_auth": user_proof(&rotated, "u1")}),
    )
    .await;
    assert_eq!(status, 201, "{device}");
    // A client key cannot read or rotate the secret.
    for (method, body) in [
        (Method::GET, None),
        (Method::POST, Some(json!({"rotate_secret": true}))),
    ] {
        let (status, _) = t
            .call(method, "/v1/app/user-auth", Some(&app.client_key), body)
            .await;
        assert_eq!(status, 403);
    }
    t.shutdown().await;
}

async fn an_unverified_app_accepts_client_user_ids_without_proof(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let (_, shown) = t
        .call(Method::GET, "/v1/app", Some(&app.server_key), None)
        .await;
    assert_eq!(shown["client_user_ids"], "verified", "new apps verify");
    let (status, settings) = t
        .call(
            Method::POST,
            "/v1/app/user-auth",
            Some(&app.server_key),
            Some(json!({"client_user_ids": "unverified"})),
        )
        .await;
    assert_eq!(status, 200, "{settings}");
    assert_eq!(settings["client_user_ids"], "unverified");
    assert_eq!(
        settings["secret"],
        app.user_auth_secret.as_str(),
        "not rotated"
    );
    let (_, shown) = t
        .call(Method::GET, "/v1/app", Some(&app.server_key), None)
        .await;
    assert_eq!(shown["client_user_ids"], "unverified");

    let token = apns_token(9);
    let (status, device) = register(
        &t,
        &app.client_key,
        &token,
        json!({"platform": "apns", "user_id": "anyone"}),
    )
    .await;
    assert_eq!(status, 201, "{device}");
    // A proof that is sent is still checked.
    let (status, body) = register(
        &t,
        &app.client_key,
        &token,
        json!({"platform": "apns", "user_id": "anyone", "user_auth": user_proof(&app, "else")}),
    )
    .await;
    assert_refused(status, &body);
    let (status, err) = t
        .call(
            Method::POST,
            "/v1/app/user-auth",
            Some(&app.server_key),
            Some(json!({"client_user_ids": "sometimes"})),
        )
        .await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["field"], "client_user_ids");
    t.shutdown().await;
}

async fn a_server_key_registers_any_user_without_proof(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let token = apns_token(10);
    for user in ["u1", "u2"] {
        let (status, device) = register(
            &t,
            &app.server_key,
            &token,
            json!({"platform": "apns", "user_id": user}),
        )
        .await;
        assert!(status == 201 || status == 200, "{device}");
        assert_eq!(device["user_id"], user);
    }
    t.shutdown().await;
}

async fn moving_a_token_to_another_user_needs_that_users_proof(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let token = apns_token(11);
    let alice =
        json!({"platform": "apns", "user_id": "alice", "user_auth": user_proof(&app, "alice")});
    let (status, _) = register(&t, &app.client_key, &token, alice).await;
    assert_eq!(status, 201);

    for proof in [None, Some(user_proof(&app, "alice"))] {
        let mut body = json!({"platform": "apns", "user_id": "bob"});
        if let Some(p) = proof {
            body["user_auth"] = json!(p);
        }
        let (status, refused) = register(&t, &app.client_key, &token, body).await;
        assert_refused(status, &refused);
        assert_eq!(stored_user(&t, &app, &token).await, Some(json!("alice")));
    }
    // Keeping the same user needs no new proof (apps re-register on every launch).
    let (status, device) = register(
        &t,
        &app.client_key,
        &token,
        json!({"platform": "apns", "user_id": "alice", "locale": "fr-FR"}),
    )
    .await;
    assert_eq!(status, 200, "{device}");
    assert_eq!(device["locale"], "fr-FR");

    let bob = json!({"platform": "apns", "user_id": "bob", "user_auth": user_proof(&app, "bob")});
    let (status, device) = register(&t, &app.client_key, &token, bob).await;
    assert_eq!(status, 200, "{device}");
    assert_eq!(stored_user(&t, &app, &token).await, Some(json!("bob")));

    // Logging out (no user) needs no proof; coming back to a user does.
    let (status, device) = register(&t, &app.client_key, &token, json!({"platform": "apns"})).await;
    assert_eq!(status, 200, "{device}");
    assert_eq!(device["user_id"], Value::Null);
    let (status, refused) = register(
        &t,
        &app.client_key,
        &token,
        json!({"platform": "apns", "user_id": "bob"}),
    )
    .await;
    assert_refused(status, &refused);
    let (status, err) = register(
        &t,
        &app.client_key,
        &token,
        json!({"platform": "apns", "user_auth": user_proof(&app, "bob")}),
    )
    .await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["field"], "user_auth");
    t.shutdown().await;
}

/// An app and a device written at schema version 4, before user verification existed.
async fn prepare_version_4(db: &Db, url: &str) {
    use sha2::{Digest, Sha256};
    sqlx::any::install_default_drivers();
    let (dir, url) = match db {
        Db::Sqlite => ("migrations/sqlite", format!("{url}?mode=rwc")),
        Db::Postgres(_) => ("migrations/postgres", url.to_string()),
    };
    let pool = sqlx::AnyPool::connect(&url).await.expect("connect");
    let mut migrator =
        sqlx::migrate::Migrator::new(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
            .await
            .expect("migrations");
    let old: Vec<_> = migrator
        .migrations
        .iter()
        .filter(|m| m.version <= 4)
        .cloned()
        .collect();
    assert_eq!(old.len(), 4);
    migrator.migrations = old.into();
    migrator.run(&pool).await.expect("migrate to version 4");
    sqlx::query("INSERT INTO apps (id, name, created_at) VALUES ('app_old', 'old', 1)")
        .execute(&pool)
        .await
        .expect("app");
    for (id, kind) in [("oldserver", "server"), ("oldclient", "client")] {
        sqlx::query(
            "INSERT INTO api_keys (id, app_id, kind, secret_hash, created_at) \
             VALUES ($1, 'app_old', $2, $3, 1)",
        )
        .bind(id)
        .bind(kind)
        .bind(hex::encode(Sha256::digest(b"s3cret")))
        .execute(&pool)
        .await
        .expect("key");
    }
    sqlx::query(
        "INSERT INTO devices (app_id, token, platform, user_id, created_at, updated_at) \
         VALUES ('app_old', $1, 'apns', 'u-old', 1, 1)",
    )
    .bind(apns_token(12))
    .execute(&pool)
    .await
    .expect("device");
    pool.close().await;
}

async fn apps_from_before_the_upgrade_stay_unverified_and_get_a_secret(db: Db) {
    let dir = std::sync::Arc::new(tempfile::tempdir().expect("tempdir"));
    let url = db.fresh_url(dir.path()).await;
    prepare_version_4(&db, &url).await;
    let t = TestApp::spawn_on(url, dir, |_| {}).await;
    let (server, client) = ("pb_server_oldserver_s3cret", "pb_client_oldclient_s3cret");

    let (status, shown) = t.call(Method::GET, "/v1/app", Some(server), None).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["client_user_ids"], "unverified");
    let (_, settings) = t
        .call(Method::GET, "/v1/app/user-auth", Some(server), None)
        .await;
    let secret = settings["secret"].as_str().expect("a secret").to_string();
    assert!(
        secret.starts_with("pbua_") && secret.len() == 69,
        "{secret}"
    );

    // The stored device survived; installed apps keep registering as before.
    let (status, device) = t
        .call(
            Method::GET,
            &format!("/v1/devices/{}", apns_token(12)),
            Some(server),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(device["user_id"], "u-old");
    let (status, device) = register(
        &t,
        client,
        &apns_token(13),
        json!({"platform": "apns", "user_id": "u-new"}),
    )
    .await;
    assert_eq!(status, 201, "{device}");

    // The generated secret is usable, and opting in makes proofs required.
    let (status, _) = t
        .call(
            Method::POST,
            "/v1/app/user-auth",
            Some(server),
            Some(json!({"client_user_ids": "verified"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, refused) = register(
        &t,
        client,
        &apns_token(14),
        json!({"platform": "apns", "user_id": "u-new"}),
    )
    .await;
    assert_refused(status, &refused);
    let old = NewApp {
        app: t
            .store()
            .get_app("app_old")
            .await
            .expect("read")
            .expect("app"),
        server_key: server.into(),
        client_key: client.into(),
        user_auth_secret: secret,
    };
    let (status, device) = register(
        &t,
        client,
        &apns_token(14),
        json!({"platform": "apns", "user_id": "u-new", "user_auth": user_proof(&old, "u-new")}),
    )
    .await;
    assert_eq!(status, 201, "{device}");

    // Apps created after the upgrade verify.
    let fresh = t.new_app().await;
    let (_, shown) = t
        .call(Method::GET, "/v1/app", Some(&fresh.server_key), None)
        .await;
    assert_eq!(shown["client_user_ids"], "verified");
    t.shutdown().await;
}

backend_tests!(
    a_client_key_cannot_claim_a_user_without_proof,
    a_proof_for_another_user_is_refused,
    an_hmac_proof_registers_the_user,
    an_hs256_jwt_proof_is_accepted,
    an_es256_jwt_against_a_registered_key_is_accepted,
    a_public_key_must_match_its_algorithm,
    an_expired_jwt_is_refused,
    a_jwt_valid_for_more_than_an_hour_is_refused,
    rotating_the_secret_retires_the_old_proofs,
    an_unverified_app_accepts_client_user_ids_without_proof,
    a_server_key_registers_any_user_without_proof,
    moving_a_token_to_another_user_needs_that_users_proof,
    apps_from_before_the_upgrade_stay_unverified_and_get_a_secret,
);
