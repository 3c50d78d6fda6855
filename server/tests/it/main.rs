//! Integration tests of `daig-server`: one target, one module per area. Most drive `app(state)` with
//! `tower::ServiceExt::oneshot` over a real SQLite file in a temporary directory; `socket` runs the server on a
//! real socket, `training` drives providers over real WebSockets (with the protocol client of `wire_provider`),
//! and `binary` runs the binary. The `daig` CLI's tests, against a server on a real socket, are in `cli/tests`.

mod accounts;
mod binary;
mod datasets;
mod errors;
mod events;
mod limits;
mod observability;
mod projects;
mod routes;
mod session;
mod socket;
mod socket_limits;
mod support;
mod tokens;
mod training;
mod web;
mod wire_provider;
