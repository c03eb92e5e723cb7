//! The hypervisor's modules form layers: no module imports one that imports it back,
//! directly or through others. Checked by a host test over `hypervisor/src` (every
//! `crate::name` path and `use crate::{a, b}` group counts as an import), so a new
//! cycle fails `cargo xtask test`. The order is drawn in `docs/architecture.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name -> the modules it names, for every `*.rs` file directly in `dir` and
/// every directory module (`name/mod.rs`, with all the files under it).
pub fn imports(dir: &Path) -> std::io::Result<BTreeMap<String, BTreeSet<String>>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        if path.is_dir() && path.join("mod.rs").exists() {
            let names = graph.entry(stem).or_default();
            for file in std::fs::read_dir(&path)? {
                let file = file?.path();
                if file.extension().and_then(|e| e.to_str()) == Some("rs") {
                    names.extend(names_in(&std::fs::read_to_string(&file)?));
                }
            }
        } else if path.extension().and_then(|e| e.to_str()) == Some("rs") {
            graph.insert(stem, names_in(&std::fs::read_to_string(&path)?));
        }
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for (name, deps) in graph.iter_mut() {
        deps.retain(|d| d != name && modules.contains(d));
    }
    Ok(graph)
}

/// Module names a source file refers to through `crate::`.
fn names_in(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = group.split('}').next().unwrap_or("");
                found.extend(group.split(',').map(|g| ident(g.trim())));
            } else {
                found.insert(ident(rest));
            }
        }
    }
    found.retain(|n| !n.is_empty() && n.chars().next().is_some_and(|c| c.is_ascii_lowercase()));
    found
}

/// A cycle in `graph`, if there is one (as the modules along it).
pub fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(n) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = path.iter().position(|p| p == n).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(n.to_string(), Mark::Visiting);
        path.push(n.to_string());
        for d in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, graph, marks, path) {
                return Some(c);
            }
        }
        path.pop();
        marks.insert(n.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut marks, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_paths_are_imports() {
        let n = names_in("use crate::{console, hart};\nlet x = crate::vm::Vm; // crate::cow\n");
        assert_eq!(n.into_iter().collect::<Vec<_>>(), ["console", "hart", "vm"]);
    }

    #[test]
    fn a_cycle_is_found() {
        let mut g = BTreeMap::new();
        g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
        g.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
        g.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
        assert_eq!(find_cycle(&g).map(|c| c.len()), Some(4));
        g.get_mut("c").unwrap().clear();
        assert_eq!(find_cycle(&g), None);
    }

    #[test]
    fn the_hypervisor_modules_form_layers() {
        let dir = crate::workspace_root().join("hypervisor/src");
        let graph = imports(&dir).expect("reading hypervisor/src");
        assert!(graph.len() > 10, "found only {:?}", graph.keys());
        assert!(
            graph.contains_key("vmtree"),
            "directory modules are read too"
        );
        if let Some(cycle) = find_cycle(&graph) {
            panic!("import cycle in hypervisor/src: {}", cycle.join(" -> "));
        }
    }
}
