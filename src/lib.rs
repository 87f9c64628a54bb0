//! ecr-build: the build stage of an AWS CodePipeline: ECR login, BuildKit builds through the Docker Engine
//! API, tags from the commit, pushes, and the deploy stage's artifacts.
//!
//! The library exports what main needs; everything else is the crate's own, and the lints below
//! keep it so: an item nothing reaches is an error, not a hidden `pub`.

#![warn(unreachable_pub)]

mod artifacts;
mod aws;
mod bases;
mod cache;
pub mod cli;
mod compose;
mod config;
mod context;
mod decide;
mod docker;
mod dockerfile;
mod error;
mod exec;
mod git;
mod gopath;
pub mod output;
mod pipeline;
mod prepare;
mod reference;
mod registry;
mod report;
mod retry;
mod reuse;
mod run;
mod secrets;
mod tags;

pub use error::Error;
pub use run::run;
