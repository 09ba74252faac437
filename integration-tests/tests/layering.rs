//! Dependencies point down only: account -> record -> store -> net -> {mail, ipfs} -> node.
//! Reads `cargo metadata` and fails on any edge between dkvs crates that is not allowed, on a
//! network stack below dkvs-net, and on dkvs-net naming the extensions it hosts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// The layers, lowest first. A crate may depend only on crates in lower layers.
const LAYERS: &[&[&str]] = &[
    &["dkvs-account"],
    &["dkvs-record"],
    &["dkvs-store"],
    &["dkvs-net"],
    // The test network sits on dkvs-net like mail and IPFS; their tests may use it
    // (dev-dependencies are not layered).
    &["dkvs-mail", "dkvs-ipfs", "dkvs-testnet"],
    &["dkvs-node"],
    // The measured testnet sits on top: it runs networks of nodes (and mainline's), and
    // `dkvs node` processes through the node's own client.
    &["dkvs-testbed"],
];

/// Crates below dkvs-net: they know nothing of a network or a runtime.
const BELOW_NET: &[&str] = &["dkvs-account", "dkvs-record", "dkvs-store"];

fn layer_of(name: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&name))
}

/// The edges between dkvs crates that do not point to a lower layer, as "from -> to".
fn wrong_edges(graph: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut wrong = Vec::new();
    for (name, deps) in graph {
        let Some(layer) = layer_of(name) else { continue };
        for dep in deps.iter().filter(|d| d.starts_with("dkvs")) {
            match layer_of(dep) {
                Some(dep_layer) if dep_layer < layer => {}
                _ => wrong.push(format!("{name} -> {dep}")),
            }
        }
    }
    wrong
}

/// Every package `root` depends on for its library (normal dependencies, transitively).
fn normal_closure(graph: &BTreeMap<String, Vec<String>>, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![root.to_owned()];
    while let Some(name) = todo.pop() {
        for dep in graph.get(&name).into_iter().flatten() {
            if seen.insert(dep.clone()) {
                todo.push(dep.clone());
            }
        }
    }
    seen
}

fn metadata(no_deps: bool) -> serde_json::Value {
    // Not offline: the whole resolved graph names packages of other platforms too (a
    // Windows-only dependency of a terminal crate), which a build here never downloads.
    let mut args = vec!["metadata", "--format-version", "1", "--locked"];
    if no_deps {
        args.push("--no-deps");
    }
    let output = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("json")
}

/// Package name -> names of its normal (library) dependencies, from the resolved graph.
fn resolved_graph() -> BTreeMap<String, Vec<String>> {
    let metadata = metadata(false);
    let names: BTreeMap<&str, &str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().expect("id"), p["name"].as_str().expect("name")))
        .collect();
    let mut graph = BTreeMap::new();
    for node in metadata["resolve"]["nodes"].as_array().expect("resolve nodes") {
        let name = names[node["id"].as_str().expect("id")].to_owned();
        let deps = node["deps"].as_array().expect("deps");
        let normal = deps.iter().filter(|d| {
            d["dep_kinds"].as_array().expect("dep_kinds").iter().any(|k| k["kind"].is_null())
        });
        let entry: &mut Vec<String> = graph.entry(name).or_default();
        entry.extend(normal.map(|d| names[d["pkg"].as_str().expect("pkg")].to_owned()));
    }
    graph
}

#[test]
fn dependencies_point_down() {
    let metadata = metadata(true);
    let mut graph = BTreeMap::new();
    for package in metadata["packages"].as_array().expect("packages") {
        let name = package["name"].as_str().expect("name").to_owned();
        // What a crate's library and binaries use; its tests may use anything.
        let deps = package["dependencies"].as_array().expect("dependencies");
        let deps = deps
            .iter()
            .filter(|d| d["kind"].as_str() != Some("dev"))
            .map(|d| d["name"].as_str().expect("name").to_owned())
            .collect();
        graph.insert(name, deps);
    }
    let seen: BTreeSet<String> = graph.keys().filter(|n| layer_of(n).is_some()).cloned().collect();
    let all: BTreeSet<String> =
        LAYERS.iter().flat_map(|l| l.iter().map(|s| s.to_string())).collect();
    assert_eq!(seen, all, "every layered crate is in the workspace");
    let wrong = wrong_edges(&graph);
    assert!(wrong.is_empty(), "dependencies that point up or sideways: {wrong:?}");
}

#[test]
fn the_check_catches_wrong_edges_in_a_made_up_graph() {
    let graph = |edges: &[(&str, &[&str])]| -> BTreeMap<String, Vec<String>> {
        edges
            .iter()
            .map(|(from, to)| (from.to_string(), to.iter().map(|t| t.to_string()).collect()))
            .collect()
    };
    let good = graph(&[
        ("dkvs-store", &["dkvs-record", "parking_lot"]),
        ("dkvs-mail", &["dkvs-net"]),
        ("dkvs-benches", &["dkvs-node"]),
    ]);
    assert!(wrong_edges(&good).is_empty());
    let bad = graph(&[
        ("dkvs-store", &["dkvs-net"]),
        ("dkvs-mail", &["dkvs-ipfs", "dkvs-net"]),
        ("dkvs-net", &["dkvs-unknown"]),
        ("dkvs-testnet", &["dkvs-node"]),
    ]);
    assert_eq!(
        wrong_edges(&bad),
        [
            "dkvs-mail -> dkvs-ipfs",
            "dkvs-net -> dkvs-unknown",
            "dkvs-store -> dkvs-net",
            "dkvs-testnet -> dkvs-node"
        ]
    );
    let chain = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &[])]);
    assert_eq!(normal_closure(&chain, "a"), ["b", "c"].map(String::from).into());
}

#[test]
fn nothing_below_dkvs_net_pulls_in_a_network_stack_or_a_runtime() {
    let graph = resolved_graph();
    for name in BELOW_NET {
        let closure = normal_closure(&graph, name);
        let stack: Vec<&String> = closure
            .iter()
            .filter(|d| d.starts_with("libp2p") || d.starts_with("tokio") || *d == "async-std")
            .collect();
        assert!(stack.is_empty(), "{name} depends on {stack:?}");
    }
    // The check can fail: dkvs-net itself does pull them in.
    assert!(normal_closure(&graph, "dkvs-net").contains("libp2p"));
}

#[test]
fn dkvs_net_names_no_extension_it_hosts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/dkvs-net");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("manifest");
    assert!(!manifest.contains("dkvs-mail") && !manifest.contains("dkvs-ipfs"));
    let mut named = Vec::new();
    let mut files = vec![root.join("src")];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).expect("dir").map(|e| e.expect("entry").path()));
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("source");
        for (n, line) in text.lines().enumerate() {
            if names_an_extension(line) {
                named.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(named.is_empty(), "dkvs-net code that names mail or IPFS: {named:#?}");
    assert!(names_an_extension("let mailbox = dkvs_mail::open();"));
    assert!(!names_an_extension("    // an IPFS peer or a mailbox address"));
}

/// True when the code of `line` (its comment aside) names mail or IPFS.
fn names_an_extension(line: &str) -> bool {
    let code = line.split("//").next().unwrap_or_default().to_lowercase();
    code.contains("mail") || code.contains("ipfs")
}

#[test]
fn every_crate_packages_on_its_own() {
    // A file a crate includes at compile time must be inside the crate, or its package on
    // crates.io does not build (CI packages without building every crate again).
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut outside = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).expect("crates") {
        let krate = entry.expect("entry").path();
        let mut files = vec![krate.join("src")];
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).expect("dir").map(|e| e.expect("e").path()));
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for included in included_paths(&text) {
                let target = path.parent().expect("a file's directory").join(&included);
                let inside = std::fs::canonicalize(&target)
                    .is_ok_and(|t| t.starts_with(std::fs::canonicalize(&krate).expect("crate")));
                if !inside {
                    outside.push(format!("{} includes {included}", path.display()));
                }
            }
        }
    }
    assert!(outside.is_empty(), "files included from outside their crate: {outside:#?}");
    assert_eq!(included_paths(r#"include_str!("../../../docs/x.json")"#), ["../../../docs/x.json"]);
}

/// The paths of `include_str!` and `include_bytes!` in `text`.
fn included_paths(text: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for marker in ["include_str!(\"", "include_bytes!(\""] {
        let mut rest = text;
        while let Some(at) = rest.find(marker) {
            rest = &rest[at + marker.len()..];
            if let Some(end) = rest.find('"') {
                paths.push(rest[..end].to_owned());
            }
        }
    }
    paths
}
