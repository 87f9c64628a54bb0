//! The commands, and how their errors map to exit statuses.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cli::{BuildArgs, Cli, Command, PlanArgs};
use crate::config::{self, ConfigError};
use crate::pipeline::{self, BuildSettings};

/// SIGINT or SIGTERM (CodeBuild's timeout sends one) ended the run; exit 128 + the signal's number.
#[derive(Debug, thiserror::Error)]
#[error("stopped by {name}: builds cancelled, no artifact written")]
pub struct Interrupted {
    name: &'static str,
    number: u8,
}

/// The first SIGINT or SIGTERM.
async fn interrupted() -> Interrupted {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => Interrupted { name: "SIGINT", number: 2 },
        _ = term.recv() => Interrupted { name: "SIGTERM", number: 15 },
    }
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        // exec replaces this process: signals go to the command once it runs.
        Command::Exec(args) => match crate::exec::run(args).await? {},
        Command::Plan(args) => until_interrupted(plan(args)).await,
        Command::Build(args) => until_interrupted(build(args)).await,
    }
}

/// Dropping the work's future on a signal closes every Engine API request, so the engine cancels the
/// builds, and drops every temporary file; artifacts are written only at the very end.
async fn until_interrupted(work: impl Future<Output = Result<()>>) -> Result<()> {
    tokio::select! {
        result = work => result,
        signal = interrupted() => Err(signal.into()),
    }
}

fn current_dir() -> Result<PathBuf> {
    std::env::current_dir().context("cannot read the current directory")
}

async fn plan(args: PlanArgs) -> Result<()> {
    let plan = config::load(&args, None, &current_dir()?)?;
    pipeline::plan(plan, args.sha.as_deref()).await
}

async fn build(args: BuildArgs) -> Result<()> {
    let plan = config::load(&args.plan, args.output_dir.as_deref(), &current_dir()?)?;
    let jobs = match args.jobs {
        Some(0) => return Err(ConfigError::Usage("--jobs must be at least 1".into()).into()),
        Some(jobs) => jobs,
        None => std::thread::available_parallelism().map_or(2, usize::from),
    };
    let settings = BuildSettings {
        dry_run: args.dry_run,
        rebuild: args.rebuild,
        retry_budget: Duration::from_secs(args.push_retry_seconds),
        jobs,
        docker_timeout: Duration::from_secs(args.docker_timeout),
    };
    pipeline::build(plan, args.plan.sha.as_deref(), settings).await
}

/// 2 for bad usage or configuration, 1 for everything that failed while doing the work; `exec` exits
/// 127 (or 126) like a shell when it cannot run the command.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if let Some(exec) = err
        .chain()
        .find_map(|c| c.downcast_ref::<crate::exec::ExecError>())
    {
        exec.exit_code()
    } else if let Some(signal) = err.chain().find_map(|c| c.downcast_ref::<Interrupted>()) {
        128 + signal.number
    } else if err.chain().any(|cause| cause.is::<ConfigError>()) {
        2
    } else {
        1
    }
}
