//! prenv: one preview environment per GitHub pull request, written as Kustomize overlays into an
//! environments repository that Flux or Argo CD reconciles.
//!
//! The core (`naming`, `plan`, `render`, `yaml`) is pure; adapters sit at the edge.

pub mod audit;
pub mod config;
pub mod envrepo;
pub mod envstate;
pub mod error;
pub mod github;
pub mod init;
pub mod kinds;
pub mod metrics;
pub mod naming;
pub mod plan;
pub mod pr;
pub mod quantity;
pub mod render;
pub mod report;
pub mod sealed;
pub mod secrets;
pub mod serve;
pub mod sops;
pub mod state;
pub mod sync;
pub mod templates;
pub mod tree;
pub mod watch;
pub mod yaml;

pub use error::{Error, Result};
