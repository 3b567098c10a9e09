//! Route groups, one module per resource.

pub mod sandboxes;
pub mod templates;
