//! Dependencies point down only: account -> record -> store -> net -> {mail, ipfs} -> node.
//! Reads `cargo metadata` and fails on any edge between dkvs crates that is not allowed.

use std::collections::BTreeSet;
use std::process::Command;

/// The layers, lowest first. A crate may depend only on crates in lower layers.
const LAYERS: &[&[&str]] = &[
    &["dkvs-account"],
    &["dkvs-record"],
    &["dkvs-store"],
    &["dkvs-net"],
    &["dkvs-mail", "dkvs-ipfs"],
    &["dkvs-node"],
];

fn layer_of(name: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&name))
}

#[test]
fn dependencies_point_down() {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let packages = metadata["packages"].as_array().expect("packages");
    let mut seen = BTreeSet::new();
    let mut wrong = Vec::new();
    for package in packages {
        let name = package["name"].as_str().expect("name");
        let Some(layer) = layer_of(name) else { continue };
        seen.insert(name.to_owned());
        for dep in package["dependencies"].as_array().expect("dependencies") {
            let dep_name = dep["name"].as_str().expect("dependency name");
            if !dep_name.starts_with("dkvs") {
                continue;
            }
            match layer_of(dep_name) {
                Some(dep_layer) if dep_layer < layer => {}
                _ => wrong.push(format!("{name} -> {dep_name}")),
            }
        }
    }
    let all: BTreeSet<String> =
        LAYERS.iter().flat_map(|l| l.iter().map(|s| s.to_string())).collect();
    assert_eq!(seen, all, "every layered crate is in the workspace");
    assert!(wrong.is_empty(), "dependencies that point up or sideways: {wrong:?}");
}

#[test]
fn the_check_catches_a_wrong_edge() {
    // The rule itself: an upward or sideways edge has no lower layer.
    assert!(layer_of("dkvs-record") < layer_of("dkvs-store"));
    assert!(layer_of("dkvs-mail") == layer_of("dkvs-ipfs"), "mail and ipfs do not know each other");
    assert!(layer_of("dkvs-benches").is_none() && layer_of("dkvs-integration-tests").is_none());
}
