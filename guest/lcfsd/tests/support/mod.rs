//! Helpers for the end-to-end tests that need them: OCI images built here, and file trees
//! described for comparison.

pub mod oci;
pub mod tree;
