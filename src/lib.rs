//! ecr-build: the build stage of an AWS CodePipeline: ECR login, BuildKit builds through the Docker Engine
//! API, tags from the commit, pushes, and the deploy stage's artifacts.

pub mod artifacts;
pub mod aws;
pub mod cli;
pub mod config;
pub mod context;
pub mod docker;
pub mod exec;
pub mod output;
pub mod pipeline;
pub mod registry;
pub mod retry;
mod run;
pub mod tags;

pub use run::{exit_code, run};
