//! The `daig` requestor CLI, for the end-to-end tests.

fn main() -> std::process::ExitCode {
    daig_cli::main()
}
