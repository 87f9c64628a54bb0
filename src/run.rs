//! The commands, and how their errors map to exit statuses.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::cli::{Cli, Command};
use crate::config::{self, ConfigError};
use crate::pipeline::{self, BuildSettings};

pub async fn run(cli: Cli) -> Result<()> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    match cli.command {
        Command::Plan(args) => {
            let plan = config::load(&args, None, &cwd)?;
            pipeline::plan(plan, args.sha.as_deref()).await
        }
        Command::Build(args) => {
            let plan = config::load(&args.plan, args.output_dir.as_deref(), &cwd)?;
            let jobs = match args.jobs {
                Some(0) => {
                    return Err(ConfigError::Usage("--jobs must be at least 1".into()).into());
                }
                Some(jobs) => jobs,
                None => std::thread::available_parallelism().map_or(2, usize::from),
            };
            let settings = BuildSettings {
                dry_run: args.dry_run,
                rebuild: args.rebuild,
                jobs,
                docker_timeout: Duration::from_secs(args.docker_timeout),
            };
            pipeline::build(plan, args.plan.sha.as_deref(), settings).await
        }
        Command::Exec(args) => match crate::exec::run(args).await? {},
    }
}

/// 2 for bad usage or configuration, 1 for everything that failed while doing the work; `exec` exits
/// 127 (or 126) like a shell when it cannot run the command.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if let Some(exec) = err
        .chain()
        .find_map(|c| c.downcast_ref::<crate::exec::ExecError>())
    {
        exec.exit_code()
    } else if err.chain().any(|cause| cause.is::<ConfigError>()) {
        2
    } else {
        1
    }
}
