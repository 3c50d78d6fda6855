//! The `daig-server` binary, for the end-to-end tests.

fn main() -> anyhow::Result<()> {
    daig_server::server_main()
}
