//! End-to-end tests: the real binary against a real Docker Engine, registry and moto, which
//! scripts/test.sh starts once for the whole run. One test binary, so the services are shared.

mod build;
mod cache;
mod codebuild;
mod compose;
mod differential;
mod dockerignore;
mod errors;
mod exec;
mod faults;
mod filesync;
mod harness;
mod inputs;
mod mirror;
mod platforms;
mod remote;
mod reuse;
mod secrets;
mod skips;
mod ssm;
