//! Fakes of the peers `prenv watch` talks to (the Kubernetes API server, GitHub), the real watcher
//! binary run against them, and the replay of the status fixtures in `tests/fixtures/status/`;
//! shared by the watcher's tests and its benchmark.
#![allow(dead_code)]

pub mod github;
pub mod kube;
pub mod replay;
