//! `daig-server`: loads the settings, opens the database, binds, and serves until Ctrl-C or SIGTERM (see
//! [`daig_server::server_main`]).

fn main() -> anyhow::Result<()> {
    daig_server::server_main()
}
