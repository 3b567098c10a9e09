//! Route groups, one module per resource.

pub mod builds;
pub mod sandboxes;
pub mod templates;
