//! `daig`, the requestor CLI. Everything is in `daig_server::cli`; this only hands over the exit code.

fn main() -> std::process::ExitCode {
    daig_server::cli::main()
}
