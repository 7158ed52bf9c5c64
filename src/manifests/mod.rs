//! Typed manifests and the one YAML writer: what an environment, its wiring and the platform
//! scaffold are as files. Pure: values in, text out.

pub mod kinds;
pub mod render;
pub mod scaffold;
pub mod templates;
pub mod yaml;
