//! `daig signup`, `login`, `logout` and `whoami`.
//!
//! Logging in takes three requests, since the API hands out tokens only to an authenticated user: `POST
//! /api/session` with the password (a dashboard session: cookies and a CSRF token), `POST /api/tokens` with that
//! session, and `DELETE /api/session` to end it. Only the token is kept.

use std::io::{BufRead as _, IsTerminal as _};

use daig_shared::api::accounts::TOKEN_NAME_MAX_CHARS;
use reqwest::Method;
use serde_json::{Value, json};

use super::Context;
use super::client::{self, Client};
use super::config::{self, Credentials};
use super::error::CliError;
use super::output;
use super::wire::{CreatedToken, Me, Session, TokenList};

/// `daig signup`.
#[derive(Debug, clap::Args)]
pub struct SignupArgs {
    /// 3 to 32 letters, digits, `_` or `-`.
    #[arg(long, short)]
    pub username: String,
    #[arg(long, short)]
    pub email: String,
    /// Read the password from the first line of standard input instead of asking for it.
    #[arg(long)]
    pub password_stdin: bool,
}

/// `daig login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The username or the e-mail address.
    #[arg(long, short)]
    pub username: String,
    /// Read the password from the first line of standard input instead of asking for it.
    #[arg(long)]
    pub password_stdin: bool,
}

/// Creates the account, then logs in.
///
/// # Errors
/// A refused sign-up (taken name, invalid fields, all listed) or log-in.
pub async fn signup(ctx: &Context, args: SignupArgs) -> Result<(), CliError> {
    let target = ctx.target()?;
    let password = read_password(args.password_stdin, true)?;
    let client = Client::new(&target.server, None)?;
    let body = json!({"username": args.username, "email": args.email, "password": password});
    let (user_json, user): (Value, Me) = client.post("/api/users", &body).await?;
    let saved = log_in(&client, target.saved, &args.username, password).await?;
    if ctx.json {
        output::print_json(&json!({"user": user_json, "server": saved.server, "token_id": saved.token_id,
                                   "credentials": saved.path.display().to_string()}));
    } else {
        say!("Signed up as {} <{}> on {}.", user.username, user.email, saved.server);
        say!("Logged in; the API token is saved in {}.", saved.path.display());
    }
    Ok(())
}

/// Logs in and saves a new token, revoking the one it replaces.
///
/// # Errors
/// A wrong login or password, or a server that cannot be reached.
pub async fn login(ctx: &Context, args: LoginArgs) -> Result<(), CliError> {
    let target = ctx.target()?;
    let password = read_password(args.password_stdin, false)?;
    let client = Client::new(&target.server, None)?;
    let saved = log_in(&client, target.saved, &args.username, password).await?;
    if ctx.json {
        output::print_json(&json!({"username": saved.username, "server": saved.server, "token_id": saved.token_id,
                                   "expires_at_unix": saved.expires_at_unix,
                                   "credentials": saved.path.display().to_string()}));
    } else {
        say!("Logged in to {} as {}.", saved.server, saved.username);
        say!(
            "The API token (valid until {}) is saved in {}.",
            output::utc(saved.expires_at_unix),
            saved.path.display()
        );
    }
    Ok(())
}

/// What [`log_in`] saved.
struct Saved {
    server: String,
    username: String,
    token_id: i64,
    expires_at_unix: i64,
    path: std::path::PathBuf,
}

/// Gets a token with the password (see the module docs) and saves it. A token saved before for this server is
/// revoked, so that logging in again does not leave live tokens behind.
async fn log_in(
    client: &Client,
    previous: Option<Credentials>,
    login: &str,
    password: String,
) -> Result<Saved, CliError> {
    let request = client.request(Method::POST, "/api/session").json(&json!({"login": login, "password": password}));
    let response = client.send(request).await?;
    let cookies = client::cookies_of(&response);
    let session: Session = response
        .json()
        .await
        .map_err(|e| CliError::Other(anyhow::anyhow!("the server's log-in answer does not parse: {e}")))?;
    let headers = client::session_headers(&cookies, &session.csrf_token)?;
    let request =
        client.request(Method::POST, "/api/tokens").headers(headers.clone()).json(&json!({"name": token_name()}));
    let (_, token): (Value, CreatedToken) = client.json(request).await?;
    // The session was only needed to create the token. If ending it fails, it expires by itself.
    let _ = client.send(client.request(Method::DELETE, "/api/session").headers(headers)).await;
    if let Some(previous) = previous {
        // Best effort: a previous token that is already revoked or expired needs nothing more.
        if let Ok(old) = Client::new(client.server(), Some(previous.token)) {
            let _ = old.delete(&format!("/api/tokens/{}", previous.token_id)).await;
        }
    }
    let credentials = Credentials {
        server: client.server().to_owned(),
        token: token.token,
        token_id: token.id,
        username: session.user.username,
    };
    let path = config::save(&credentials)?;
    Ok(Saved {
        server: credentials.server,
        username: credentials.username,
        token_id: credentials.token_id,
        expires_at_unix: token.expires_at_unix,
        path,
    })
}

/// Revokes the token in use and forgets the saved one.
///
/// # Errors
/// Not logged in, or a server that cannot be reached (the token is then kept, so that logging out can be retried).
pub async fn logout(ctx: &Context) -> Result<(), CliError> {
    let target = ctx.target()?;
    let client = ctx.client_for(&target)?;
    let token = target.token.unwrap_or_default();
    let saved_id = target.saved.as_ref().filter(|s| s.token == token).map(|s| s.token_id);
    let revoked = match revoke(&client, saved_id, &token).await {
        Ok(()) => true,
        // The server no longer takes the token: there is nothing to revoke, only to forget.
        Err(CliError::Api { status: 401 | 404, .. }) => false,
        Err(e) => return Err(e),
    };
    let forgotten = saved_id.is_some() && config::remove()?;
    if ctx.json {
        output::print_json(&json!({"server": target.server, "revoked": revoked, "forgotten": forgotten}));
        return Ok(());
    }
    if revoked {
        say!("Revoked the token on {}.", target.server);
    } else {
        say!("The token was no longer valid on {}.", target.server);
    }
    if forgotten {
        say!("Removed it from {}.", config::path()?.display());
    } else {
        say!("It came from {}, which is still set.", config::TOKEN_VAR);
    }
    Ok(())
}

/// Revokes `token`, whose id is `id` if known, else looked up among the user's tokens by its prefix.
async fn revoke(client: &Client, id: Option<i64>, token: &str) -> Result<(), CliError> {
    let id = match id {
        Some(id) => id,
        None => {
            let (_, list): (Value, TokenList) = client.get("/api/tokens").await?;
            let mut matching = list.tokens.iter().filter(|t| !t.prefix.is_empty() && token.starts_with(&t.prefix));
            match (matching.next(), matching.next()) {
                (Some(one), None) => one.id,
                _ => {
                    return Err(CliError::Other(anyhow::anyhow!(
                        "cannot tell which of your tokens this is; revoke it from the dashboard"
                    )));
                }
            }
        }
    };
    client.delete(&format!("/api/tokens/{id}")).await
}

/// Shows the user the token belongs to.
///
/// # Errors
/// Not logged in, or a token the server refuses.
pub async fn whoami(ctx: &Context) -> Result<(), CliError> {
    let client = ctx.client()?;
    let (value, me): (Value, Me) = client.get("/api/me").await?;
    if ctx.json {
        output::print_json(&value);
    } else {
        say!("{} <{}> (user {}) on {}", me.username, me.email, me.id, client.server());
    }
    Ok(())
}

/// The password: the first line of stdin with `--password-stdin`, else asked for on the terminal without echo
/// (twice when `confirm`).
fn read_password(from_stdin: bool, confirm: bool) -> Result<String, CliError> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| CliError::Usage(format!("cannot read the password from standard input: {e}")))?;
        let password = line.trim_end_matches(['\n', '\r']).to_owned();
        if password.is_empty() {
            return Err(CliError::Usage("--password-stdin read an empty password".into()));
        }
        return Ok(password);
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(
            "no terminal to ask for the password on; pass --password-stdin to read it from standard input".into(),
        ));
    }
    let ask = |prompt: &str| {
        rpassword::prompt_password(prompt).map_err(|e| CliError::Usage(format!("cannot read the password: {e}")))
    };
    let password = ask("Password: ")?;
    if confirm && ask("Repeat the password: ")? != password {
        return Err(CliError::Usage("the two passwords differ".into()));
    }
    Ok(password)
}

/// The new token's name: `daig CLI on <host>`, cut to the server's 64 characters.
fn token_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && !h.chars().any(char::is_control));
    let name = match host {
        Some(host) => format!("daig CLI on {host}"),
        None => "daig CLI".to_owned(),
    };
    name.chars().take(TOKEN_NAME_MAX_CHARS).collect()
}
