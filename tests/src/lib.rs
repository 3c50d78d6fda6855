//! End-to-end tests that cross crates: the `daig-server` and `daig-provider` programs as processes
//! (`tests/training.rs`), started from this crate's copies of the two binaries (`src/bin/`), which call the
//! same main functions. The tests of each crate live in that crate.
