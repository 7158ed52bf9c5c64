//! The pure core: lifecycle plan, capacity queue, mass-prune breaker, desired state, diff, status
//! mapping and the watcher's tracker. No clock, no randomness, no I/O: time is an argument, and the traits in
//! [`ports`] are the seams where the shells plug in git, GitHub and Kubernetes.

pub mod breaker;
pub mod capacity;
pub mod desired;
pub mod diff;
pub mod eligible;
pub mod plan;
pub mod ports;
pub mod prints;
pub mod status;
pub mod tracker;
