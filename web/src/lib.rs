//! DAIG's web pages: the requestor dashboard, the contribute page and the embeddable script.
//!
//! Nothing here yet: the browser-provider and dashboard issues fill this crate.

pub use daig_shared as shared;
