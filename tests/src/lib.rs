//! End-to-end tests that cross crates (server, providers, browser). The first of them arrive with the
//! management-server issue; the tests of `daig-shared` live in `shared/tests/`.
