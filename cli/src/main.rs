//! `daig`, the requestor CLI. Everything is in the `daig_cli` library; this only hands over the exit code.

fn main() -> std::process::ExitCode {
    daig_cli::main()
}
