//! `daig`, the requestor CLI: sign up and log in (an API token saved in the user's configuration directory),
//! create projects from model files, upload datasets with a progress bar, start, pause, resume and cancel
//! training, follow it with `status --watch`, and download the trained model.
//!
//! It talks only HTTP to the server's JSON API, through [`client::Client`]; it never opens the database or the
//! object store. The binary (`src/main.rs`) only calls [`main`]. It depends on
//! `daig-shared` and an HTTP client only, so that `cargo install --path cli` builds no server dependencies.
//!
//! - [`config`]: the saved credentials and which server and token a command uses.
//! - [`client`]: the HTTP client and the mapping of failures to [`error::CliError`].
//! - [`error`]: the errors, how they are printed and their exit codes.
//! - [`wire`]: the lenient reading of the server's answers.
//! - [`output`]: formatting and progress bars.
//! - [`account`], [`project`], [`transfer`]: the commands.

/// Prints a line on stdout through [`output::emit`].
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::output::emit(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Prints on stdout through [`output::emit`], without adding a newline.
macro_rules! say_part {
    ($($arg:tt)*) => {
        $crate::output::emit(format_args!($($arg)*))
    };
}

pub mod account;
pub mod client;
pub mod config;
pub mod error;
pub mod output;
pub mod project;
pub mod transfer;
pub mod wire;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use self::client::Client;
use self::config::Target;
use self::error::CliError;

const AFTER_HELP: &str = "\
Environment:
  DAIG_SERVER      the server's URL, like --server
  DAIG_TOKEN       an API token to use instead of the saved one
  DAIG_CONFIG_DIR  where `daig login` saves the server and token [default: daig/ in the user's config directory]

Exit codes: 0 success; 1 refused by the server or failed; 2 wrong usage or unusable input file; 3 not logged in \
or token refused; 4 no such project, or nothing to download yet; 5 the server cannot be reached.";

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "daig",
    version,
    about = "The DAIG requestor CLI: projects, datasets, training and downloads on a DAIG server",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// The server's URL [default: the one logged in to, else http://127.0.0.1:8080].
    #[arg(long, global = true, env = "DAIG_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// Print the server's JSON answers instead of text, and no progress bars.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an account, then log in as `login` does.
    Signup(account::SignupArgs),
    /// Log in with a password and save a new API token for the server.
    Login(account::LoginArgs),
    /// Revoke the saved token on the server and forget it.
    Logout,
    /// Show who the token belongs to.
    Whoami,
    /// Create, list, show and delete projects.
    #[command(subcommand)]
    Project(project::ProjectCommand),
    /// Upload a project's dataset (features and labels), then show its summary.
    Upload(transfer::UploadArgs),
    /// Start training a project that has a dataset.
    Start(project::IdArg),
    /// Pause a running project.
    Pause(project::IdArg),
    /// Resume a paused project.
    Resume(project::IdArg),
    /// Cancel a running or paused project for good.
    Cancel(project::IdArg),
    /// Show a project's state, progress, dataset, latest metrics and providers; `--watch` follows it.
    Status(project::StatusArgs),
    /// Download the trained model (safetensors), its spec and the metrics history.
    Download(transfer::DownloadArgs),
}

/// What every command needs besides its own arguments.
#[derive(Debug, Clone)]
pub struct Context {
    /// `--server` or `DAIG_SERVER`.
    pub server_flag: Option<String>,
    /// `--json`.
    pub json: bool,
}

impl Context {
    /// The server and token to use.
    ///
    /// # Errors
    /// An invalid server URL or an unreadable credentials file.
    pub fn target(&self) -> Result<Target, CliError> {
        let env_token = std::env::var(config::TOKEN_VAR).ok();
        config::resolve(self.server_flag.as_deref(), env_token, config::load()?)
    }

    /// A client with the token for the server.
    ///
    /// # Errors
    /// [`CliError::NotLoggedIn`] when there is no token for the server.
    pub fn client(&self) -> Result<Client, CliError> {
        self.client_for(&self.target()?)
    }

    /// A client with the token for `target`.
    ///
    /// # Errors
    /// [`CliError::NotLoggedIn`] when `target` has no token.
    pub fn client_for(&self, target: &Target) -> Result<Client, CliError> {
        let Some(token) = target.token.clone() else {
            return Err(CliError::NotLoggedIn(match &target.other_server {
                Some(other) => format!("not logged in to {} (the saved token is for {other})", target.server),
                None => format!("not logged in to {}", target.server),
            }));
        };
        Client::new(&target.server, Some(token))
    }

    /// Whether progress bars should stay hidden.
    pub fn quiet(&self) -> bool {
        self.json
    }
}

/// Runs the command line of this process and returns its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{}", e.render());
            e.exit_code()
        }
    }
}

/// Runs one command.
///
/// # Errors
/// Whatever the command fails with.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let ctx = Context { server_flag: cli.server, json: cli.json };
    match cli.command {
        Command::Signup(args) => account::signup(&ctx, args).await,
        Command::Login(args) => account::login(&ctx, args).await,
        Command::Logout => account::logout(&ctx).await,
        Command::Whoami => account::whoami(&ctx).await,
        Command::Project(command) => project::run(&ctx, command).await,
        Command::Upload(args) => transfer::upload(&ctx, args).await,
        Command::Start(args) => project::act(&ctx, args.id, project::Action::Start).await,
        Command::Pause(args) => project::act(&ctx, args.id, project::Action::Pause).await,
        Command::Resume(args) => project::act(&ctx, args.id, project::Action::Resume).await,
        Command::Cancel(args) => project::act(&ctx, args.id, project::Action::Cancel).await,
        Command::Status(args) => project::status(&ctx, args).await,
        Command::Download(args) => transfer::download(&ctx, args).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
