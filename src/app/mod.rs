//! The commands' imperative shells: each reads its inputs once, calls the pure core, and hands the
//! result to an adapter.

pub mod audit;
pub mod init;
pub mod metrics;
pub mod onboard;
pub mod projects;
pub mod render;
pub mod serve;
pub mod show;
pub mod sync;
pub mod watch;
