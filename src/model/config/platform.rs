//! `[platform]`: what `prenv init` needs to know about the cluster it scaffolds for.

use serde::{Deserialize, Serialize};

/// The platform settings of `prenv init`; every value the scaffold needs that has no safe default.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Platform {}
