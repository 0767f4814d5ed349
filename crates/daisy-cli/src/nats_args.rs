//! The NATS connection options every NATS-speaking command takes.
//!
//! Precedence: a flag beats its environment variable; without `--nats` and
//! `NATS_URL`, commands use the embedded server that `daisy run` started
//! for the current directory (its URL is in `.daisy/nats/url`).

use std::path::{Path, PathBuf};

use clap::Args;
use daisy::nats::embedded::EMBEDDED_URL_FILE;
use daisy_nats::{ConnectOptions, Nats};

use crate::input::BadInput;

/// How to reach and authenticate to NATS.
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL, e.g. nats://scheduler-host:4222 [default: $NATS_URL, then the
    /// embedded server of ./.daisy]
    #[arg(long = "nats", value_name = "URL", env = "NATS_URL")]
    pub url: Option<String>,
    /// A .creds file (JWT + nkey seed), as issued by nsc or Synadia Cloud.
    #[arg(long, value_name = "FILE", env = "NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// User name (with --password).
    #[arg(long, requires = "password", env = "NATS_USER")]
    pub user: Option<String>,
    /// Password (with --user).
    #[arg(long, requires = "user", env = "NATS_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Authentication token.
    #[arg(long, env = "NATS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of CA certificates to trust (turns TLS on).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl NatsArgs {
    /// Connect options for `url`, named `name` on the server.
    pub fn options(&self, url: String, name: &str) -> ConnectOptions {
        ConnectOptions {
            url,
            creds_file: self.creds.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            token: self.token.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_client_cert: self.tls_cert.clone(),
            tls_client_key: self.tls_key.clone(),
            name: Some(name.to_owned()),
            ..ConnectOptions::default()
        }
    }

    /// The URL to use: the flag or `NATS_URL`, else the embedded server of
    /// `state_dir`.
    pub fn resolve_url(&self, state_dir: &Path) -> Result<String, BadInput> {
        if let Some(url) = &self.url {
            return Ok(url.clone());
        }
        let file = state_dir.join(EMBEDDED_URL_FILE);
        match std::fs::read_to_string(&file) {
            Ok(url) if !url.trim().is_empty() => Ok(url.trim().to_owned()),
            _ => Err(BadInput(format!(
                "no NATS server given: pass --nats nats://host:4222 or set NATS_URL (no embedded \
                 server URL in {})",
                file.display()
            ))),
        }
    }

    /// Connects, with errors that say what to check.
    pub async fn connect(&self, url: String, name: &str) -> anyhow::Result<Nats> {
        let options = self.options(url.clone(), name);
        daisy_nats::connect(&options)
            .await
            .map_err(|err| anyhow::anyhow!("cannot connect to NATS at {url}: {err}"))
    }
}
