use std::process::ExitCode;

use clap::Parser;
use ecr_build::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    ecr_build::output::init(cli.verbose, cli.quiet);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ecr_build::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{}", ecr_build::output::describe_error(&err));
            ExitCode::from(err.code())
        }
    }
}
