//! The commands: each turns its arguments into a plan and runs it until done or interrupted.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{BuildArgs, Cli, Command, PlanArgs};
use crate::config::{self, ArtifactFlags, ImageUriKind};
use crate::error::{Error, Result};
use crate::pipeline::{self, BuildSettings, RunEnvironment};

/// The first SIGINT or SIGTERM.
async fn interrupted() -> Error {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => Error::Interrupted { name: "SIGINT", number: 2 },
        _ = term.recv() => Error::Interrupted { name: "SIGTERM", number: 15 },
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
        signal = interrupted() => Err(signal),
    }
}

fn current_dir() -> Result<PathBuf> {
    std::env::current_dir()
        .map_err(|err| anyhow::anyhow!("cannot read the current directory: {err}").into())
}

/// The process environment, read here once: everything below takes it as values.
fn environment() -> (HashMap<String, String>, RunEnvironment) {
    // A variable that is not UTF-8 is taken as unset (std::env::vars would panic on it).
    let variables: HashMap<String, String> = (std::env::vars_os())
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect();
    let run = RunEnvironment::from_lookup(&|name| variables.get(name).cloned());
    (variables, run)
}

async fn plan(args: PlanArgs) -> Result<()> {
    let (variables, environment) = environment();
    let plan = config::load(&args, ArtifactFlags::default(), &current_dir()?, &variables)?;
    pipeline::plan(plan, &environment).await
}

/// `--jobs` when not given: the number of CPUs, but at least this.
const MIN_DEFAULT_JOBS: usize = 4;

async fn build(args: BuildArgs) -> Result<()> {
    let flags = ArtifactFlags {
        output_dir: args.output_dir.as_deref(),
        image_uri: args.image_uri.map(ImageUriKind::from),
    };
    let (variables, environment) = environment();
    let plan = config::load(&args.plan, flags, &current_dir()?, &variables)?;
    let jobs = match args.jobs {
        Some(0) => return Err(Error::usage("--jobs must be at least 1")),
        Some(jobs) => jobs,
        // A build waits on one RUN step, a pull or a push much of its time: at least 4 at once
        // keep two cores busy (BuildKit shares them out).
        None => std::thread::available_parallelism().map_or(MIN_DEFAULT_JOBS, |cpus| {
            usize::from(cpus).max(MIN_DEFAULT_JOBS)
        }),
    };
    let settings = BuildSettings {
        dry_run: args.dry_run,
        rebuild: args.rebuild,
        retry_budget: Duration::from_secs(args.push_retry_seconds),
        jobs,
        docker_timeout: Duration::from_secs(args.docker_timeout),
    };
    pipeline::build(plan, settings, &environment).await
}
