//! The architecture as a check: every module of `src/` uses only modules
//! of its own layer or below, in the order `src/lib.rs` documents. A lower
//! layer reaching up (a parser calling the mount code, say) fails here,
//! naming the file and the module it reached for.

use std::path::{Path, PathBuf};

/// Bottom to top, as in `src/lib.rs`.
const LAYERS: &[&[&str]] = &[
    &["errors", "sync", "core", "confined", "probe", "paths", "mountinfo", "logging", "kill_point"],
    &["backend", "meta"],
    &["store"],
    &["image", "options"],
    &["fuse", "config"],
    &["compose", "store_lock"],
    &["create", "mount"],
    &["fsck", "status", "service", "mount_helper", "grow"],
    &["cli"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its unit tests, which may use any layer.
fn code_without_tests(path: &Path) -> Option<String> {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return None;
    }
    let text = std::fs::read_to_string(path).unwrap();
    Some(match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => text[..at].to_string(),
        None => text,
    })
}

/// Top-level modules named after `crate::` in the code.
fn used_modules(code: &str) -> Vec<String> {
    let mut used = vec![];
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            used.push(name);
        } else if let Some(list) = rest.strip_prefix('{') {
            // `use crate::{a, b::c};`
            let list = &list[..list.find('}').unwrap_or(list.len())];
            for item in list.split(',') {
                let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    used.push(name);
                }
            }
        }
    }
    used
}

#[test]
fn no_module_uses_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    rust_files(&src, &mut files);
    let mut problems = vec![];
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let top =
            relative.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(own) = layer_of(&top) else {
            problems.push(format!("src/{}: module {top} is in no layer of tests/layers.rs", relative.display()));
            continue;
        };
        let Some(code) = code_without_tests(file) else { continue };
        for used in used_modules(&code) {
            match layer_of(&used) {
                Some(layer) if layer > own => problems.push(format!(
                    "src/{}: {top} (layer {own}) uses {used} (layer {layer}), a layer above it",
                    relative.display()
                )),
                Some(_) => {}
                None => problems.push(format!("src/{}: uses {used}, which is in no layer", relative.display())),
            }
        }
    }
    problems.sort();
    problems.dedup();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_check_sees_every_use() {
    let mut used = used_modules("use crate::{config::MountSpec, mount};\nlet x = crate::cli::main();");
    used.sort();
    assert_eq!(used, ["cli", "config", "mount"]);
    assert!(layer_of("cli") > layer_of("config"), "the CLI sits above the definitions");
}
