//! `daig project create|list|show|delete`, the lifecycle commands `start`, `pause`, `resume`, `cancel`, and
//! `status [--watch]`.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Map, Value, json};

use super::Context;
use super::error::CliError;
use super::output;
use super::wire::{Project, ProjectList};

/// `daig project ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ProjectCommand {
    /// Create a project from a model file (DAIG JSON, or Keras JSON with a loss) and training settings.
    Create(Box<CreateArgs>),
    /// List your projects.
    List,
    /// Show a project in full: model, settings, state, dataset, metrics, providers.
    Show(IdArg),
    /// Delete a project with its dataset, checkpoints and model.
    Delete(DeleteArgs),
    /// Replace the sites (origins like https://blog.example.org) whose pages may embed a site-key project;
    /// none clears the list. A running project takes the new list at once.
    Sites(SitesArgs),
}

/// `daig project sites`.
#[derive(Debug, clap::Args)]
pub struct SitesArgs {
    /// The project's id.
    pub id: i64,
    /// The sites' origins.
    #[arg(value_name = "ORIGIN")]
    pub sites: Vec<String>,
}

/// A project id.
#[derive(Debug, clap::Args)]
pub struct IdArg {
    /// The project's id.
    pub id: i64,
}

/// `daig project delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// The project's id.
    pub id: i64,
    /// Do not ask for confirmation (needed when standard input is not a terminal).
    #[arg(long, short)]
    pub yes: bool,
}

/// `daig project create`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("model_file").required(true).args(["model", "keras"])))]
pub struct CreateArgs {
    /// 1 to 100 characters.
    #[arg(long)]
    pub name: String,
    /// The model in DAIG JSON (`input_shape`, `layers`, `loss`).
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// A Keras `Sequential` model as `model.to_json()` writes it; needs --loss.
    #[arg(long, value_name = "FILE")]
    pub keras: Option<PathBuf>,
    /// The loss for --keras: cross_entropy, mean_squared_error or binary_cross_entropy (Keras names work too).
    #[arg(long, requires = "keras")]
    pub loss: Option<String>,
    /// Training settings as JSON (any of the fields of `settings` in `POST /api/projects`); the flags below
    /// override it.
    #[arg(long, value_name = "FILE")]
    pub settings: Option<PathBuf>,
    #[command(flatten)]
    pub flags: SettingFlags,
}

/// The common training settings as flags; the server checks their ranges and lists every one out of range.
#[derive(Debug, Default, clap::Args)]
pub struct SettingFlags {
    /// Samples per local step on a provider [server default: 32].
    #[arg(long, value_name = "N")]
    pub batch_size: Option<u32>,
    /// Contributions averaged into one update [server default: 4].
    #[arg(long, value_name = "N")]
    pub k: Option<u32>,
    /// Local steps a provider takes before it sends a contribution [server default: 1].
    #[arg(long, value_name = "N")]
    pub local_steps: Option<u32>,
    /// How many versions behind a contribution may be [server default: 2].
    #[arg(long, value_name = "N")]
    pub max_staleness: Option<u32>,
    /// Passes over the training set [server default: 10].
    #[arg(long, value_name = "N")]
    pub epochs: Option<u32>,
    /// The optimiser [server default: adam].
    #[arg(long, value_enum)]
    pub optimizer: Option<Optimizer>,
    /// The base learning rate [server default: 0.001].
    #[arg(long, value_name = "RATE")]
    pub learning_rate: Option<f64>,
    /// Fraction of samples held out for validation, 0 to 0.5 [server default: 0.1].
    #[arg(long, value_name = "FRACTION")]
    pub validation_fraction: Option<f64>,
    /// Seed of the shuffle, the split and the initial parameters [server default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Providers training at once [server default: 64].
    #[arg(long, value_name = "N")]
    pub max_providers: Option<u32>,
    /// Samples per dataset shard [server default: 1024].
    #[arg(long, value_name = "N")]
    pub samples_per_shard: Option<u32>,
    /// Who may contribute [server default: public].
    #[arg(long, value_enum)]
    pub access: Option<Access>,
    /// A site (origin like https://blog.example.org) whose pages may embed a site-key project; repeat for more.
    #[arg(long = "site", value_name = "ORIGIN")]
    pub sites: Vec<String>,
}

/// `--optimizer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Optimizer {
    Adam,
    Sgd,
}

/// `--access`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Access {
    /// Any visitor of the contribute page.
    Public,
    /// Only pages that embed the project's site key.
    SiteKey,
}

/// `daig status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The project's id.
    pub id: i64,
    /// Follow the project with a progress bar until it is finished or cancelled.
    #[arg(long, short)]
    pub watch: bool,
    /// Seconds between two looks with --watch.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_interval)]
    pub interval: f64,
}

/// A lifecycle move: the server's own list of them.
pub use daig_shared::api::project::Action;

/// Runs a `daig project` command.
///
/// # Errors
/// Whatever the command fails with.
pub async fn run(ctx: &Context, command: ProjectCommand) -> Result<(), CliError> {
    match command {
        ProjectCommand::Create(args) => create(ctx, *args).await,
        ProjectCommand::List => list(ctx).await,
        ProjectCommand::Show(args) => show(ctx, args.id).await,
        ProjectCommand::Delete(args) => delete(ctx, args).await,
        ProjectCommand::Sites(args) => sites(ctx, args).await,
    }
}

async fn create(ctx: &Context, args: CreateArgs) -> Result<(), CliError> {
    let client = ctx.client()?;
    let settings = match &args.settings {
        Some(path) => Some(read_json(path)?),
        None => None,
    };
    let mut body = json!({"name": args.name, "settings": merge_settings(settings, &args.flags)?});
    match (&args.model, &args.keras) {
        (Some(path), _) => body["model"] = read_json(path)?,
        (None, Some(path)) => {
            body["keras_model"] = Value::String(read_text(path)?);
            if let Some(loss) = args.loss {
                body["loss"] = Value::String(loss);
            }
        }
        // clap requires one of the two.
        (None, None) => return Err(CliError::Usage("give --model FILE or --keras FILE".into())),
    }
    let (value, project): (Value, Project) = client.post("/api/projects", &body).await?;
    if ctx.json {
        output::print_json(&value);
    } else {
        say_part!("{}", output::project(&project, true));
        say!("Next: daig upload {} --features FEATURES --labels LABELS   (npy, npz, idx, or one csv)", project.id);
    }
    Ok(())
}

/// The `settings` object: the file's (or an empty one) with the flags written over it.
fn merge_settings(file: Option<Value>, flags: &SettingFlags) -> Result<Value, CliError> {
    let mut settings = match file {
        None => Map::new(),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(CliError::Usage("the settings file must hold a JSON object".into())),
    };
    let mut set = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            settings.insert(key.to_owned(), value);
        }
    };
    set("batch_size", flags.batch_size.map(Value::from));
    set("k", flags.k.map(Value::from));
    set("local_steps", flags.local_steps.map(Value::from));
    set("max_staleness", flags.max_staleness.map(Value::from));
    set("epochs", flags.epochs.map(Value::from));
    set("validation_fraction", flags.validation_fraction.map(Value::from));
    set("seed", flags.seed.map(Value::from));
    set("max_providers", flags.max_providers.map(Value::from));
    set("samples_per_shard", flags.samples_per_shard.map(Value::from));
    set("access", flags.access.map(|a| Value::from(if a == Access::Public { "public" } else { "site_key" })));
    set("sites", (!flags.sites.is_empty()).then(|| Value::from(flags.sites.clone())));
    if flags.optimizer.is_some() || flags.learning_rate.is_some() {
        // The server needs a whole optimiser: start from its default (Adam, 0.001) when the file gives none.
        let optimizer =
            settings.entry("optimizer").or_insert_with(|| json!({"method": {"type": "adam"}, "learning_rate": 0.001}));
        let Some(optimizer) = optimizer.as_object_mut() else {
            return Err(CliError::Usage("`optimizer` in the settings file must be an object".into()));
        };
        if let Some(method) = flags.optimizer {
            let name = if method == Optimizer::Adam { "adam" } else { "sgd" };
            optimizer.insert("method".into(), json!({"type": name}));
        }
        if let Some(rate) = flags.learning_rate {
            optimizer.insert("learning_rate".into(), Value::from(rate));
        }
    }
    Ok(Value::Object(settings))
}

async fn list(ctx: &Context) -> Result<(), CliError> {
    let client = ctx.client()?;
    let (value, list): (Value, ProjectList) = client.get("/api/projects").await?;
    if ctx.json {
        output::print_json(&value);
        return Ok(());
    }
    if list.projects.is_empty() {
        say!("No projects yet; create one with `daig project create`.");
        return Ok(());
    }
    let name_width = list.projects.iter().map(|p| p.name.chars().count()).max().unwrap_or(0).max(4);
    say!("{:>5}  {:<name_width$}  {:<9}  {:>5}  {:>8}  CREATED", "ID", "NAME", "STATE", "EPOCH", "PROGRESS");
    for p in &list.projects {
        say!(
            "{:>5}  {:<name_width$}  {:<9}  {:>5}  {:>7.1}%  {}",
            p.id,
            p.name,
            p.state,
            p.epoch,
            p.progress * 100.0,
            output::utc(p.created_at_unix)
        );
    }
    Ok(())
}

async fn show(ctx: &Context, id: i64) -> Result<(), CliError> {
    let client = ctx.client()?;
    let (value, project): (Value, Project) = client.get(&format!("/api/projects/{id}")).await?;
    if ctx.json {
        output::print_json(&value);
    } else {
        say_part!("{}", output::project(&project, true));
    }
    Ok(())
}

async fn sites(ctx: &Context, args: SitesArgs) -> Result<(), CliError> {
    let client = ctx.client()?;
    let path = format!("/api/projects/{}/sites", args.id);
    let (value, project): (Value, Project) = client.put(&path, &json!({"sites": args.sites})).await?;
    if ctx.json {
        output::print_json(&value);
    } else {
        let sites = &value["settings"]["sites"];
        let list: Vec<&str> =
            sites.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        if list.is_empty() {
            say!("Project {} lists no sites: browsers on other sites are refused.", project.id);
        } else {
            say!("Project {} takes browsers from: {}", project.id, list.join(", "));
        }
    }
    Ok(())
}

async fn delete(ctx: &Context, args: DeleteArgs) -> Result<(), CliError> {
    let client = ctx.client()?;
    let (_, project): (Value, Project) = client.get(&format!("/api/projects/{}", args.id)).await?;
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(CliError::Usage("deleting needs --yes when standard input is not a terminal".into()));
        }
        eprint!("Delete project {} \"{}\" with its dataset and models? [y/N] ", project.id, project.name);
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).map_err(|e| CliError::Usage(format!("no answer: {e}")))?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Err(CliError::Usage("not deleted".into()));
        }
    }
    client.delete(&format!("/api/projects/{}", args.id)).await?;
    if ctx.json {
        output::print_json(&json!({"deleted": args.id}));
    } else {
        say!("Deleted project {} \"{}\".", project.id, project.name);
    }
    Ok(())
}

/// Starts, pauses, resumes or cancels project `id`.
///
/// # Errors
/// 404 for no such project; 409 when the project's state does not allow the move, with the server's reason.
pub async fn act(ctx: &Context, id: i64, action: Action) -> Result<(), CliError> {
    let client = ctx.client()?;
    let request = client.request(Method::POST, &format!("/api/projects/{id}/{}", action.name()));
    let (value, project): (Value, Project) = client.json(request).await?;
    if ctx.json {
        output::print_json(&value);
        return Ok(());
    }
    say!("Project {} \"{}\" is now {}.", project.id, project.name, project.state);
    if matches!(action, Action::Start | Action::Resume) {
        say!("Follow it with: daig status {} --watch", project.id);
    }
    Ok(())
}

/// Shows a project's status once, or follows it until it is finished or cancelled.
///
/// # Errors
/// A failed request, also in the middle of a watch.
pub async fn status(ctx: &Context, args: StatusArgs) -> Result<(), CliError> {
    let client = ctx.client()?;
    let path = format!("/api/projects/{}", args.id);
    if !args.watch {
        let (value, project): (Value, Project) = client.get(&path).await?;
        if ctx.json {
            output::print_json(&value);
        } else {
            say_part!("{}", output::project(&project, false));
        }
        return Ok(());
    }
    // On a terminal a bar on stderr; otherwise (a log, a pipe) one line on stdout each time something changes.
    // With --json, one JSON object per look.
    let interactive = !ctx.json && std::io::stderr().is_terminal();
    let bar = output::watch_bar(!interactive);
    let mut last_message = String::new();
    loop {
        let (value, project): (Value, Project) = match client.get(&path).await {
            Ok(answer) => answer,
            Err(e) => {
                bar.abandon();
                return Err(e);
            }
        };
        let message = output::watch_message(&project);
        if ctx.json {
            say!("{value}");
        } else if !interactive && message != last_message {
            say!("{message}");
        }
        bar.set_position((project.progress.clamp(0.0, 1.0) * 1000.0).round() as u64);
        bar.set_message(message.clone());
        last_message = message;
        if project.is_done() {
            // `abandon` keeps the position: `finish` would fill the bar of a project cancelled half-way.
            bar.abandon();
            if !ctx.json {
                say_part!("{}", output::project(&project, false));
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs_f64(args.interval)).await;
    }
}

fn parse_interval(text: &str) -> Result<f64, String> {
    let secs: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if !(0.1..=3600.0).contains(&secs) {
        return Err("must be from 0.1 to 3600 seconds".into());
    }
    Ok(secs)
}

/// A file's text; a missing or unreadable file is a usage error naming it.
pub fn read_text(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))
}

fn read_json(path: &Path) -> Result<Value, CliError> {
    serde_json::from_str(&read_text(path)?)
        .map_err(|e| CliError::Usage(format!("{} is not valid JSON: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_written_over_the_settings_file() {
        let flags = SettingFlags {
            batch_size: Some(64),
            epochs: Some(3),
            learning_rate: Some(0.01),
            access: Some(Access::SiteKey),
            ..SettingFlags::default()
        };
        let file = json!({"batch_size": 8, "seed": 5, "optimizer": {"method": {"type": "sgd"}, "learning_rate": 1.0}});
        let merged = merge_settings(Some(file), &flags).unwrap();
        assert_eq!(
            merged,
            json!({"batch_size": 64, "seed": 5, "epochs": 3, "access": "site_key",
                   "optimizer": {"method": {"type": "sgd"}, "learning_rate": 0.01}})
        );
        let flags = SettingFlags { optimizer: Some(Optimizer::Sgd), ..SettingFlags::default() };
        assert_eq!(
            merge_settings(None, &flags).unwrap(),
            json!({"optimizer": {"method": {"type": "sgd"}, "learning_rate": 0.001}})
        );
        assert_eq!(merge_settings(None, &SettingFlags::default()).unwrap(), json!({}));
        assert!(matches!(merge_settings(Some(json!([1])), &flags), Err(CliError::Usage(_))));
    }

    #[test]
    fn intervals_are_bounded() {
        assert_eq!(parse_interval("0.5"), Ok(0.5));
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("x").is_err());
    }
}
