//! Every `.wgsl` file of the engine parses and validates with naga. Needs no GPU.

use std::path::Path;

/// Values for the template placeholders, as the engine fills them (both matmul tile shapes).
const PLACEHOLDER_SETS: &[&[(&str, u32)]] = &[
    &[("WG_X", 16), ("WG_Y", 16), ("TM", 8), ("TN", 8), ("BK", 8)],
    &[("WG_X", 8), ("WG_Y", 8), ("TM", 4), ("TN", 4), ("BK", 8)],
];

#[test]
fn every_wgsl_file_validates_with_naga() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/gpu/shaders");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let wgsl: Vec<_> = files.iter().filter(|p| p.extension().is_some_and(|e| e == "wgsl")).collect();
    assert!(wgsl.len() >= 6, "expected the engine's shaders in {}", dir.display());
    for path in wgsl {
        let source = std::fs::read_to_string(path).unwrap();
        for set in PLACEHOLDER_SETS {
            let mut code = source.clone();
            for (name, value) in *set {
                code = code.replace(&format!("{{{{{name}}}}}"), &value.to_string());
            }
            assert!(!code.contains("{{"), "{}: an unknown placeholder is left", path.display());
            let module = naga::front::wgsl::parse_str(&code)
                .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.emit_to_string(&code)));
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
                .validate(&module)
                .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.emit_to_string(&code)));
        }
    }
}
