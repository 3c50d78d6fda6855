//! The DAIG management server: accounts, projects, datasets, object storage and training coordination.
//!
//! Nothing here yet: the management-server issue fills this crate. It exists so that the workspace has its
//! designed shape and so that the server's dependency on `daig-shared` is compiled from the first commit.

pub use daig_shared as shared;
pub mod store;
