//! The `prenv` binary: parse the command line, run one command, print errors once with their chain.

mod cli;
mod cmd;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Commands, SecretsCommand};
use cmd::Outcome;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    match run(&cli) {
        Ok(Outcome::Clean) => ExitCode::SUCCESS,
        Ok(Outcome::Differs) => ExitCode::from(1),
        // `prenv plan | head -1`: the reader has what it wanted; stop quietly.
        Err(e) if closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(filter: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR"),
        ))
        .with_target(false)
        .init();
}

/// True when the error is writing to a pipe whose reader has gone.
fn closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Colour only on a terminal, and never when `NO_COLOR` is set to anything but empty (no-color.org).
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

fn run(cli: &Cli) -> anyhow::Result<Outcome> {
    let config = || -> anyhow::Result<_> {
        let path = cli.config().map_err(anyhow::Error::msg)?;
        Ok(prenv::adapters::fs::load_config(&path)?)
    };
    let projects = |args: &cli::ProjectsArgs| -> anyhow::Result<_> {
        Ok(prenv::app::projects::load(&cli.configs(args.config_dir.as_deref())?)?)
    };
    match &cli.command {
        Commands::Init(args) => cmd::init(&config()?, args),
        Commands::Onboard(args) => cmd::onboard(&config()?, args),
        Commands::Render(args) => cmd::render(&config()?, args),
        Commands::Plan(args) => cmd::plan(&config()?, args),
        Commands::Sync(args) => cmd::sync(&config()?, args),
        Commands::Audit(args) => cmd::audit(args),
        Commands::Serve(args) => cmd::serve(&projects(&args.projects)?, args),
        Commands::Watch(args) => cmd::watch(&projects(&args.projects)?, args),
        Commands::Secrets(SecretsCommand::Encrypt(args)) => cmd::encrypt(&config()?, args),
        Commands::Secrets(SecretsCommand::Decrypt(args)) => cmd::decrypt(args),
        Commands::Secrets(SecretsCommand::Rewrap(args)) => cmd::rewrap(&config()?, args),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsString;
        let table = [
            (true, None, true),
            (false, None, false),
            (true, Some(OsString::from("1")), false),
            (true, Some(OsString::new()), true),
            (false, Some(OsString::from("1")), false),
        ];
        for (terminal, no_color, want) in table {
            assert_eq!(
                super::colour(terminal, no_color.clone()),
                want,
                "{terminal} {no_color:?}"
            );
        }
    }
}
