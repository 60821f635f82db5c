//! What someone holding a copy of the database sees: the SQLite file and its WAL byte for
//! byte and `sqlite3 .dump`, or `pg_dump` (every text column through SQL where it is
//! missing), and a check that no form of a secret appears in it.

/// Every form a secret could take in a copy of the database: itself, and the part after a
/// `whsec_`/`pbua_` prefix with, for base64, the key bytes it stands for.
fn needles(secrets: &[String]) -> Vec<Vec<u8>> {
    use base64::Engine;
    let mut out = Vec::new();
    for s in secrets {
        out.push(s.as_bytes().to_vec());
        if let Some(b64) = s.strip_prefix("whsec_") {
            out.push(b64.as_bytes().to_vec());
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("base64 secret");
            out.push(raw);
        }
        if let Some(hex) = s.strip_prefix("pbua_") {
            out.push(hex.as_bytes().to_vec());
        }
    }
    out
}

pub fn assert_absent(what: &str, haystack: &[u8], secrets: &[String]) {
    assert!(!haystack.is_empty(), "{what} is empty");
    for needle in needles(secrets) {
        let found = haystack
            .windows(needle.len())
            .any(|w| w == needle.as_slice());
        assert!(
            !found,
            "{what} contains a secret in plaintext: {}",
            String::from_utf8_lossy(&needle)
        );
    }
}

/// The SQLite file path in a `sqlite://` URL.
pub fn sqlite_file(url: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(url.trim_start_matches("sqlite://"))
}

/// What a copy of the database shows: on SQLite the raw bytes of the file and its WAL, and
/// `sqlite3 .dump`; on PostgreSQL `pg_dump` (or, without it, every text column through SQL).
pub async fn database_copies(url: &str) -> Vec<(String, Vec<u8>)> {
    if url.starts_with("sqlite") {
        let file = sqlite_file(url);
        let mut copies = vec![("the database file".to_string(), copied(&file))];
        let mut wal = file.clone().into_os_string();
        wal.push("-wal");
        // Empty right after a checkpoint; otherwise it holds the latest writes.
        if std::path::Path::new(&wal).exists() {
            let bytes = copied(std::path::Path::new(&wal));
            if !bytes.is_empty() {
                copies.push(("the WAL".into(), bytes));
            }
        }
        if let Ok(out) = std::process::Command::new("sqlite3")
            .arg(&file)
            .arg(".dump")
            .output()
        {
            assert!(out.status.success(), "{out:?}");
            copies.push(("sqlite3 .dump".into(), out.stdout));
        }
        return copies;
    }
    match std::process::Command::new("pg_dump").arg(url).output() {
        Ok(out) if out.status.success() => vec![("pg_dump".into(), out.stdout)],
        _ => vec![("every text column".into(), every_text_column(url).await)],
    }
}

/// The bytes of `file`, read by another process. The bridge runs in this process, and
/// closing any descriptor of its database file here would drop the POSIX locks SQLite
/// holds on it: another process (`sqlite3` below) could then believe it is the last
/// connection and checkpoint and remove the WAL under the bridge.
fn copied(file: &std::path::Path) -> Vec<u8> {
    let out = std::process::Command::new("cat")
        .arg(file)
        .output()
        .expect("cat");
    assert!(out.status.success(), "cat {}: {out:?}", file.display());
    out.stdout
}

/// Every text value of every table in the public schema, newline-separated.
async fn every_text_column(url: &str) -> Vec<u8> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND data_type IN ('text', 'character varying', 'jsonb', 'json')",
    )
    .fetch_all(&mut conn)
    .await
    .expect("columns");
    let mut out = Vec::new();
    for (table, column) in columns {
        let values: Vec<(Option<String>,)> =
            sqlx::query_as(&format!("SELECT \"{column}\"::text FROM \"{table}\""))
                .fetch_all(&mut conn)
                .await
                .expect("values");
        for v in values.into_iter().filter_map(|(v,)| v) {
            out.extend_from_slice(v.as_bytes());
            out.push(b'\n');
        }
    }
    out
}
