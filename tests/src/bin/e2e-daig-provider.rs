//! The `daig-provider` binary, for the end-to-end tests.

fn main() -> std::process::ExitCode {
    daig_provider::native::cli::main()
}
