//! ecr-build: the build stage of an AWS CodePipeline: ECR login, BuildKit builds through the Docker Engine
//! API, tags from the commit, pushes, and the deploy stage's artifacts.

pub mod artifacts;
pub mod aws;
pub mod bases;
pub mod cli;
pub mod compose;
pub mod config;
pub mod context;
pub mod decide;
pub mod docker;
pub mod dockerfile;
pub mod error;
pub mod exec;
pub mod git;
pub mod gopath;
pub mod image;
pub mod output;
pub mod pipeline;
pub mod prepare;
pub mod reference;
pub mod registry;
pub mod report;
pub mod retry;
pub mod reuse;
mod run;
pub mod secrets;
pub mod tags;

pub use error::Error;
pub use run::run;
