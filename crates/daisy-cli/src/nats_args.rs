//! The NATS connection options every NATS-speaking command takes.
//!
//! Precedence: a flag beats its environment variable; without `--nats` and
//! `NATS_URL`, commands use the embedded server of the current directory's
//! `daisy run`: the live one while it runs (its URL is in `.daisy/nats/url`
//! only then), else, for the operator commands, one started on its store
//! for the command ([`crate::operator`]).

use std::path::{Path, PathBuf};

use clap::Args;
use daisy::nats::embedded::local_server;
use daisy::run_lock::LockHolder;
use daisy_nats::{ConnectError, ConnectOptions, Nats};

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

    /// The URL to use: the flag or `NATS_URL`, else the server of the
    /// `daisy run` running in `state_dir` now (a scheduler or worker joins a
    /// live run; it never starts a server of its own).
    pub fn resolve_url(&self, state_dir: &Path, command: &str) -> Result<String, BadInput> {
        if let Some(url) = &self.url {
            return Ok(url.clone());
        }
        let holder = LockHolder::this_process(command, "joining the run");
        match local_server(state_dir, &holder, false) {
            Ok(server) => Ok(server.url().to_owned()),
            Err(err) => Err(BadInput(format!(
                "no NATS server given: pass --nats nats://host:4222 or set NATS_URL ({})",
                error_chain(&err)
            ))),
        }
    }

    /// Connects, with errors that say what to check: a server that cannot
    /// be reached is [`Unreachable`] (exit code 3), refused credentials are
    /// [`BadInput`].
    pub async fn connect(&self, url: String, name: &str) -> anyhow::Result<Nats> {
        let options = self.options(url.clone(), name);
        daisy_nats::connect(&options).await.map_err(|err| connect_error(&url, err))
    }
}

/// Marks an error as "the NATS server cannot be reached or started" (exit
/// code 3), so that a script tells it from failed blocks (1) and bad input (2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

/// A connection failure in the exit-code classes: unreachable, bad credentials, other.
pub fn connect_error(url: &str, err: ConnectError) -> anyhow::Error {
    let message = format!("cannot connect to NATS at {url}: {}", error_chain(&err));
    match err {
        ConnectError::Connect { .. } => {
            anyhow::Error::new(Unreachable(format!("{message}; is the server running?")))
        }
        ConnectError::Unauthorized { .. }
        | ConnectError::IncompleteUserPassword
        | ConnectError::IncompleteClientCertificate
        | ConnectError::CredsFile { .. } => anyhow::Error::new(BadInput(message)),
        _ => anyhow::anyhow!(message),
    }
}

/// An error and its sources on one line.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    daisy_worker::factory::error_chain(err)
}
