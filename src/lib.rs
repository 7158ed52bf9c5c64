//! prenv: one preview environment per GitHub pull request, written as Kustomize overlays into an
//! environments repository that Flux or Argo CD reconciles.
//!
//! The layers, each importing only the ones before it (tests/layers.rs checks it):
//!
//! | layer | what it holds |
//! |---|---|
//! | [`model`] | the vocabulary: config, PRs, names, labels, `prenv.json`, the repository layout |
//! | [`manifests`] | typed Kubernetes objects, the one YAML writer, the rendering of an environment |
//! | [`secrets`] | the SOPS and Sealed Secrets formats, per-environment credentials |
//! | [`core`] | the pure decisions: plan, breaker, desired state, diff, status mapping, the watcher's tracker; the I/O traits |
//! | [`adapters`] | the only code touching git2, octocrab, kube and the file system |
//! | [`app`] | the commands' shells: sync, render, serve, watch, init, audit |

pub mod adapters;
pub mod app;
pub mod core;
pub mod error;
pub mod manifests;
pub mod model;
pub mod secrets;

pub use error::{Error, Result};
