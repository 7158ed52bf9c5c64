//! The vocabulary, the bottom layer: configuration, pull requests, names, labels, the metadata file
//! and the repository layout. Imports nothing else of prenv but the error type.

pub mod config;
pub mod labels;
pub mod layout;
pub mod meta;
pub mod naming;
pub mod parallel;
pub mod pr;
pub mod quantity;
pub mod split;
pub mod timestamp;
pub mod tree;
