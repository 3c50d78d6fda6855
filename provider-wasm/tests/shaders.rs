//! Every kernel of the engine, as assembled from its `.wgsl` files, parses and validates with naga, and
//! every `.wgsl` file belongs to a kernel. Needs no GPU.

use daig_provider::gpu::kernels::ALL;

/// Values for the template placeholders, as the engine fills them (both tile shapes of `matmul.wgsl`).
const PLACEHOLDER_SETS: &[&[(&str, u32)]] = &[
    &[("WG_X", 32), ("WG_Y", 8), ("TM", 4), ("TN", 8), ("BK", 8)],
    &[("WG_X", 8), ("WG_Y", 8), ("TM", 4), ("TN", 4), ("BK", 8)],
];

#[test]
fn every_kernel_validates_with_naga() {
    for kernel in ALL {
        for set in PLACEHOLDER_SETS {
            let mut code = kernel.source.concat();
            for (name, value) in *set {
                code = code.replace(&format!("{{{{{name}}}}}"), &value.to_string());
            }
            assert!(!code.contains("{{"), "{}: an unknown placeholder is left", kernel.name);
            let module = naga::front::wgsl::parse_str(&code)
                .unwrap_or_else(|e| panic!("{}: {}", kernel.name, e.emit_to_string(&code)));
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
                .validate(&module)
                .unwrap_or_else(|e| panic!("{}: {}", kernel.name, e.emit_to_string(&code)));
            assert!(module.entry_points.iter().any(|e| e.name == "main"), "{}: no entry point `main`", kernel.name);
        }
    }
}

#[test]
fn every_wgsl_file_is_part_of_a_kernel() {
    let dir = manifest_dir().join("src/gpu/shaders");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let wgsl: Vec<_> = files.iter().filter(|p| p.extension().is_some_and(|e| e == "wgsl")).collect();
    assert!(wgsl.len() >= 10, "expected the engine's shaders in {}", dir.display());
    for path in wgsl {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            ALL.iter().any(|k| k.source.contains(&text.as_str())),
            "{} is in no kernel, so nothing validates it",
            path.display()
        );
    }
}

/// This crate's directory in the checkout the test runs in: read when it runs (cargo sets it for tests), not
/// compiled in, since with a shared target directory a test binary built in one clone may run in another.
fn manifest_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
}
