//! `daig-provider`: contributes this machine's GPU (or CPU) to DAIG training projects. A thin binary around
//! `daig_provider::native::cli::main`.

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    daig_provider::native::cli::main()
}

/// The provider for the browser is the library itself; this binary exists only natively.
#[cfg(target_arch = "wasm32")]
fn main() {}
