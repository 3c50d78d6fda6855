//! The saved log-in: `credentials.toml` in `$DAIG_CONFIG_DIR`, or in `daig/` under the user's configuration
//! directory (`~/.config/daig` on Linux). It holds the server's URL and one API token, so it is written with mode
//! 0600 (in a 0700 directory) on Unix, through a temporary file renamed into place.
//!
//! Which server and token a command uses: `--server`/`DAIG_SERVER`, else the saved server, else
//! [`DEFAULT_SERVER`]; `DAIG_TOKEN`, else the saved token, but only when it was saved for that same server, so
//! that a token is never sent to a server it was not issued by.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::error::CliError;

/// The server used when none is given or saved: the one the README command starts.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";
/// The variable naming the configuration directory.
pub const CONFIG_DIR_VAR: &str = "DAIG_CONFIG_DIR";
/// The variable holding a token that overrides the saved one.
pub const TOKEN_VAR: &str = "DAIG_TOKEN";
const FILE_NAME: &str = "credentials.toml";

/// What `daig login` saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The server's base URL, normalised by [`normalize_server`].
    pub server: String,
    /// The API token, `daig_...`.
    pub token: String,
    /// The token's id on the server, which `daig logout` revokes.
    pub token_id: i64,
    /// Who logged in, for messages.
    pub username: String,
}

/// The directory holding [`Credentials`].
///
/// # Errors
/// When neither `$DAIG_CONFIG_DIR` nor a user configuration directory is known.
pub fn dir() -> Result<PathBuf, CliError> {
    if let Some(dir) = std::env::var_os(CONFIG_DIR_VAR).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    dirs::config_dir()
        .map(|d| d.join("daig"))
        .ok_or_else(|| CliError::Usage(format!("no configuration directory is known here; set {CONFIG_DIR_VAR}")))
}

/// The credentials file.
///
/// # Errors
/// See [`dir`].
pub fn path() -> Result<PathBuf, CliError> {
    Ok(dir()?.join(FILE_NAME))
}

/// The saved credentials, if any.
///
/// # Errors
/// A file that cannot be read or does not parse.
pub fn load() -> Result<Option<Credentials>, CliError> {
    let path = path()?;
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display())).into()),
    };
    let credentials = toml::from_str(&text).map_err(|e| {
        CliError::Usage(format!("{} is not a valid credentials file ({e}); delete it and log in again", path.display()))
    })?;
    Ok(Some(credentials))
}

/// Saves `credentials`, readable by the user only, replacing any saved before; returns the file's path.
///
/// # Errors
/// I/O errors.
pub fn save(credentials: &Credentials) -> Result<PathBuf, CliError> {
    let dir = dir()?;
    let path = dir.join(FILE_NAME);
    let text = toml::to_string(credentials).context("serialising the credentials")?;
    let write = || -> std::io::Result<()> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&dir)?;
        let temp = dir.join(format!(".{FILE_NAME}.{}", std::process::id()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temp)?;
        let written = file.write_all(text.as_bytes()).and_then(|()| file.sync_all());
        drop(file);
        match written.and_then(|()| std::fs::rename(&temp, &path)) {
            Ok(()) => Ok(()),
            Err(e) => {
                // The temporary file holds the token: do not leave it behind.
                let _ = std::fs::remove_file(&temp);
                Err(e)
            }
        }
    };
    write().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Deletes the saved credentials; returns whether there were any.
///
/// # Errors
/// I/O errors other than the file being absent.
pub fn remove() -> Result<bool, CliError> {
    let path = path()?;
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot delete {}", path.display())).into()),
    }
}

/// `url` as a server base: `http` or `https`, no trailing slash, no query. A bare `host:port` gets `http://`.
///
/// # Errors
/// [`CliError::Usage`] for anything that is not such a URL.
pub fn normalize_server(url: &str) -> Result<String, CliError> {
    let with_scheme = if url.contains("://") { url.to_owned() } else { format!("http://{url}") };
    let parsed = reqwest::Url::parse(&with_scheme)
        .map_err(|e| CliError::Usage(format!("{url:?} is not a server URL ({e}); e.g. {DEFAULT_SERVER}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(CliError::Usage(format!("{url:?} is not an http:// or https:// URL")));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() || parsed.host_str().is_none() {
        return Err(CliError::Usage(format!("{url:?} must be a base URL like {DEFAULT_SERVER}, without a query")));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

/// The server and token a command uses; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub server: String,
    /// `None` when there is nothing to authenticate with for this server.
    pub token: Option<String>,
    /// The saved credentials, when they belong to `server`.
    pub saved: Option<Credentials>,
    /// The saved credentials' server when it is not `server`, for the message saying so.
    pub other_server: Option<String>,
}

/// Resolves [`Target`] from the `--server` flag (or `DAIG_SERVER`, which clap reads), `env_token`
/// (`DAIG_TOKEN`) and the saved credentials.
///
/// # Errors
/// An invalid server URL.
pub fn resolve(
    server_flag: Option<&str>,
    env_token: Option<String>,
    saved: Option<Credentials>,
) -> Result<Target, CliError> {
    let server = match (server_flag, &saved) {
        (Some(flag), _) => normalize_server(flag)?,
        (None, Some(saved)) => saved.server.clone(),
        (None, None) => DEFAULT_SERVER.to_owned(),
    };
    let (saved, other_server) = match saved {
        Some(saved) if saved.server == server => (Some(saved), None),
        Some(saved) => (None, Some(saved.server)),
        None => (None, None),
    };
    let token = env_token.filter(|t| !t.is_empty()).or_else(|| saved.as_ref().map(|s| s.token.clone()));
    Ok(Target { server, token, saved, other_server })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(server: &str) -> Credentials {
        Credentials { server: server.into(), token: "daig_saved".into(), token_id: 1, username: "ada".into() }
    }

    #[test]
    fn server_urls_are_normalised() {
        assert_eq!(normalize_server("http://127.0.0.1:8080/").unwrap(), "http://127.0.0.1:8080");
        assert_eq!(normalize_server("localhost:9000").unwrap(), "http://localhost:9000");
        assert_eq!(normalize_server("https://daig.example.org/base/").unwrap(), "https://daig.example.org/base");
        for bad in ["ftp://x", "http://x/?a=1", "http://", "::"] {
            assert!(matches!(normalize_server(bad), Err(CliError::Usage(_))), "{bad}");
        }
    }

    #[test]
    fn a_saved_token_goes_only_to_its_own_server() {
        let here = "http://127.0.0.1:8080";
        let target = resolve(None, None, Some(saved(here))).unwrap();
        assert_eq!((target.server.as_str(), target.token.as_deref()), (here, Some("daig_saved")));
        let target = resolve(Some("http://other:1"), None, Some(saved(here))).unwrap();
        assert_eq!(target.token, None);
        assert_eq!(target.other_server.as_deref(), Some(here));
        let target = resolve(Some("http://other:1"), Some("daig_env".into()), Some(saved(here))).unwrap();
        assert_eq!(target.token.as_deref(), Some("daig_env"));
        let target = resolve(None, Some("daig_env".into()), Some(saved(here))).unwrap();
        assert_eq!(target.token.as_deref(), Some("daig_env"));
        assert_eq!(resolve(None, None, None).unwrap().server, DEFAULT_SERVER);
    }
}
