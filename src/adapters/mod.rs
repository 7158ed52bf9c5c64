//! Adapters: the only code that touches git2, octocrab, kube and the file system. Each implements
//! a trait of [`crate::core::ports`]; no SDK type leaves this folder.

pub mod fs;
pub mod git;
pub mod git_history;
pub mod github;
pub mod kube;
pub mod memory;
mod meta_codec;
pub mod pack;
pub mod pr_status;
pub mod registry;
