//! `pushbridge secrets`: maintenance of the secrets stored sealed under the master key.

use clap::Subcommand;

use crate::config::Config;

/// What to do with the stored secrets.
#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Seal every stored secret again under secrets.master_key. Values sealed under one of
    /// secrets.previous_keys open with it; afterwards those keys can be removed from the
    /// config.
    Rotate,
}

/// Runs a `secrets` subcommand.
pub async fn run(command: SecretsCommand, config: &Config) -> anyhow::Result<()> {
    match command {
        SecretsCommand::Rotate => {
            let store = crate::open_store(config).await?;
            let report = store.rotate_secrets().await?;
            let key_id = store.sealing_key_id();
            println!(
                "sealed {} secrets again under key {key_id} ({} were under a previous key, {} \
                 already under it)",
                report.written, report.under_previous_key, report.under_current_key
            );
            if report.under_previous_key > 0 || !config.secrets.previous_keys.is_empty() {
                println!(
                    "no stored secret needs secrets.previous_keys any more: remove them from \
                     the config and restart every instance"
                );
            }
            store.close().await;
            Ok(())
        }
    }
}
