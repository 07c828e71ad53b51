//! Client-facing front ends. Each turns its wire requests into calls on the one
//! [`crate::service::Service`]; none implements key-value semantics of its own.

pub mod errors;
pub mod native;
