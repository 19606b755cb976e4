//! The dependency rule of design.md ("who may depend on whom"), held by reading `src/`.
//!
//! Every `crate::…` and `super::…` path in non-test code is an edge from its file to the file
//! it names. Two checks:
//! 1. between top-level modules (`pins`, `metrics`, `upstream`, …) every edge must be in
//!    [`ALLOWED`], and the module graph has no circle;
//! 2. between the files of one folder there is no circle (a folder's `mod.rs` may use and
//!    re-export its own children: that is the folder's face, and not counted).
//!
//! Adding an edge that is not listed fails with the file and line that made it; the checker
//! itself is tested on a made-up tree in `the_checker_fails_on_an_unlisted_edge_and_a_circle`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `from → to` edges between top-level modules that the design allows. Leaves (`ids`,
/// `clock`, `vocab`, `protocol`, `located`, `civil`, `tlsfiles`, `lifecycle`) import nothing
/// from the crate, and stage modules never import `proxy`, `config`, `admin`, `app` or `cli`.
const ALLOWED: &[(&str, &[&str])] = &[
    ("ids", &[]),
    ("clock", &[]),
    ("vocab", &[]),
    ("protocol", &[]),
    ("located", &[]),
    ("civil", &[]),
    ("tlsfiles", &[]),
    ("lifecycle", &[]),
    ("fdlimit", &[]),
    ("process_metrics", &[]),
    ("trace", &["clock"]),
    ("record", &["protocol", "ids", "trace", "vocab"]),
    ("shares", &["ids"]),
    ("history", &["civil", "clock"]),
    (
        "metrics",
        &[
            "record",
            "ids",
            "vocab",
            "clock",
            "shares",
            "process_metrics",
        ],
    ),
    ("telemetry", &["protocol", "record", "civil", "trace"]),
    ("probe", &["protocol"]),
    ("pins", &["protocol", "metrics", "ids", "clock", "vocab"]),
    ("router", &["protocol", "probe", "vocab"]),
    (
        "rollout",
        &["router", "pins", "metrics", "ids", "clock", "vocab"],
    ),
    ("backend", &["protocol", "located", "civil"]),
    (
        "upstream",
        &[
            "protocol", "metrics", "backend", "ids", "router", "tlsfiles", "fdlimit",
        ],
    ),
    (
        "snapshot",
        &[
            "probe", "router", "rollout", "pins", "upstream", "ids", "vocab",
        ],
    ),
    ("respond", &["protocol", "probe", "vocab"]),
    ("admission", &["respond"]),
    (
        "listener",
        &["lifecycle", "metrics", "snapshot", "tlsfiles", "fdlimit"],
    ),
    (
        "proxy",
        &[
            "snapshot",
            "probe",
            "pins",
            "router",
            "rollout",
            "upstream",
            "respond",
            "admission",
            "record",
            "metrics",
            "telemetry",
            "protocol",
            "ids",
            "clock",
            "vocab",
            "lifecycle",
            "listener",
            "trace",
        ],
    ),
    (
        "config",
        &[
            "snapshot", "probe", "router", "rollout", "pins", "upstream", "protocol", "located",
            "metrics", "ids", "clock", "history", "vocab",
        ],
    ),
    (
        "admin",
        &[
            "history",
            "shares",
            "snapshot",
            "pins",
            "upstream",
            "router",
            "rollout",
            "config",
            "metrics",
            "listener",
            "lifecycle",
            "probe",
            "protocol",
            "ids",
        ],
    ),
    ("app", &["*"]),
    ("cli", &["*"]),
];

/// One file of the tree: its module path (`upstream::pool`) and its non-test source.
struct File {
    module: Vec<String>,
    /// `mod.rs` (or `lib.rs`): the folder's face.
    is_mod: bool,
    source: String,
    path: PathBuf,
}

/// An edge: from file → to file (module paths), with where it was seen.
#[derive(Debug, Clone)]
struct Edge {
    from: Vec<String>,
    to: Vec<String>,
    at: String,
}

fn read_tree(root: &Path) -> Vec<File> {
    let mut files = Vec::new();
    let mut skip: BTreeSet<PathBuf> = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    let mut all = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src/") {
            let p = entry.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                all.push(p);
            }
        }
    }
    all.sort();
    for p in &all {
        let text = std::fs::read_to_string(p).expect("read a source file");
        for (name, path_attr) in test_module_files(&text) {
            let dir = p.parent().expect("parent");
            let base = if p
                .file_name()
                .is_some_and(|n| n == "mod.rs" || n == "lib.rs")
            {
                dir.to_path_buf()
            } else {
                dir.join(p.file_stem().expect("stem"))
            };
            match path_attr {
                Some(rel) => skip.insert(dir.join(rel)),
                None => skip.insert(base.join(format!("{name}.rs"))),
            };
        }
    }
    for p in all {
        if skip.contains(&p) {
            continue;
        }
        let rel = p.strip_prefix(root).expect("under src/");
        let mut module: Vec<String> = rel
            .iter()
            .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        let last = module.last().cloned().unwrap_or_default();
        let is_mod = last == "mod" || (module.len() == 1 && last == "lib");
        if is_mod {
            module.pop();
        }
        if module.len() == 1 && (last == "main" || last == "lib") {
            // The crate root and the binary: wiring, not a stage.
            continue;
        }
        let text = std::fs::read_to_string(&p).expect("read a source file");
        files.push(File {
            module,
            is_mod,
            source: strip_tests_and_comments(&text),
            path: p,
        });
    }
    files
}

/// `#[cfg(test)] mod name;` declarations (with their `#[path]`, if any): files that are tests.
fn test_module_files(text: &str) -> Vec<(String, Option<String>)> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if *l != "#[cfg(test)]" {
            continue;
        }
        let mut path = None;
        for next in lines.iter().skip(i + 1).take(3) {
            if let Some(rest) = next.strip_prefix("#[path = \"") {
                path = rest.strip_suffix("\"]").map(str::to_string);
                continue;
            }
            if let Some(decl) = next.strip_prefix("mod ").and_then(|d| d.strip_suffix(';')) {
                out.push((decl.trim().to_string(), path.clone()));
            }
            break;
        }
    }
    out
}

/// The source without comments, string literals and `#[cfg(test)]` items.
fn strip_tests_and_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            // Skip the next item: up to its matching closing brace, or its `;`.
            let mut depth = 0i32;
            let mut opened = false;
            for l in lines.by_ref() {
                let code = l.split("//").next().unwrap_or("");
                for c in code.chars() {
                    match c {
                        '{' => {
                            depth += 1;
                            opened = true;
                        }
                        '}' => depth -= 1,
                        _ => {}
                    }
                }
                if (opened && depth <= 0) || (!opened && code.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        let code = strip_line(line);
        out.push_str(&code);
        out.push('\n');
    }
    out
}

/// One line without its `//` comment and string contents (good enough for path scanning).
fn strip_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_str = false;
    let mut prev = '\0';
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if !in_str && c == '/' && chars.get(i + 1) == Some(&'/') {
            break;
        }
        if c == '"' && prev != '\\' && !(prev == '\'' && chars.get(i + 1) == Some(&'\'')) {
            in_str = !in_str;
            out.push('"');
        } else if !in_str {
            out.push(c);
        }
        prev = if prev == '\\' && c == '\\' { '\0' } else { c };
        i += 1;
    }
    out
}

/// Every `crate::a::b` / `super::a` path of a file, resolved to the longest module that is a
/// file of the tree, including the paths inside `use crate::x::{a, b::c}` groups.
fn edges_of(file: &File, modules: &BTreeSet<Vec<String>>) -> Vec<Edge> {
    let mut out = Vec::new();
    let src = &file.source;
    for (lineno, line) in src.lines().enumerate() {
        let mut rest = line;
        while let Some(pos) = find_path_start(rest) {
            let tail = &rest[pos..];
            let (base, after) = if let Some(a) = tail.strip_prefix("crate::") {
                (Vec::new(), a)
            } else {
                // `super::` (possibly repeated)
                let mut base = if file.is_mod {
                    file.module.clone()
                } else {
                    let mut m = file.module.clone();
                    m.pop();
                    m
                };
                let mut a = tail;
                let mut first = true;
                while let Some(x) = a.strip_prefix("super::") {
                    if !first {
                        base.pop();
                    }
                    first = false;
                    a = x;
                }
                // `super` of a mod.rs is its parent folder's module.
                if file.is_mod {
                    base.pop();
                }
                (base, a)
            };
            let segs: Vec<String> = after
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .next()
                .unwrap_or("")
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            let mut targets = Vec::new();
            let group = after.find('{').filter(|&g| {
                after[..g]
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == ':')
            });
            let mut prefix = base.clone();
            prefix.extend(segs.iter().cloned());
            match group {
                Some(g) => {
                    let inner: String = after[g + 1..].chars().take_while(|&c| c != '}').collect();
                    for item in inner.split(',') {
                        let mut p = prefix.clone();
                        p.extend(
                            item.trim()
                                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                                .next()
                                .unwrap_or("")
                                .split("::")
                                .filter(|s| !s.is_empty() && *s != "self")
                                .map(str::to_string),
                        );
                        targets.push(p);
                    }
                }
                None => targets.push(prefix),
            }
            for t in targets {
                if let Some(to) = longest_module(&t, modules) {
                    if to != file.module {
                        out.push(Edge {
                            from: file.module.clone(),
                            to,
                            at: format!("{}:{}", file.path.display(), lineno + 1),
                        });
                    }
                }
            }
            rest = &rest[pos + 1..];
        }
    }
    out
}

fn find_path_start(s: &str) -> Option<usize> {
    let a = s.find("crate::");
    let b = s.find("super::");
    let pos = match (a, b) {
        (Some(x), Some(y)) => x.min(y),
        (x, y) => x.or(y)?,
    };
    // Not part of a longer identifier (`my_crate::`).
    let before = s[..pos].chars().last();
    if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
        let next = find_path_start(&s[pos + 1..])?;
        return Some(pos + 1 + next);
    }
    Some(pos)
}

fn longest_module(path: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
}

/// What the check found: unlisted edges and circles, each a line of text.
fn check(files: &[File], allowed: &[(&str, &[&str])]) -> Vec<String> {
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();
    let allowed: BTreeMap<&str, &[&str]> = allowed.iter().copied().collect();
    let mut problems = Vec::new();
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut within: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    let by_module: BTreeMap<&Vec<String>, &File> = files.iter().map(|f| (&f.module, f)).collect();
    for f in files {
        for e in edges_of(f, &modules) {
            let (a, b) = (&e.from[0], &e.to[0]);
            if a != b {
                let ok = match allowed.get(a.as_str()) {
                    Some(list) => list.contains(&"*") || list.contains(&b.as_str()),
                    None => false,
                };
                if !ok {
                    problems.push(format!(
                        "{}: `{a}` uses `{}`, and `{a} -> {b}` is not in the allowed list",
                        e.at,
                        e.to.join("::")
                    ));
                }
                top.entry(a.clone()).or_default().insert(b.clone());
                continue;
            }
            // Within one top-level module: a folder's mod.rs using its own descendants is
            // the folder's face; every other file edge counts for circles.
            let from_is_face = by_module.get(&e.from).is_some_and(|f| f.is_mod)
                && e.to.len() > e.from.len()
                && e.to.starts_with(&e.from);
            if !from_is_face {
                within
                    .entry(e.from.clone())
                    .or_default()
                    .insert(e.to.clone());
            }
        }
    }
    for cycle in cycles(&top) {
        problems.push(format!("module circle: {}", cycle.join(" -> ")));
    }
    for cycle in cycles(&within) {
        let names: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
        problems.push(format!("file circle: {}", names.join(" -> ")));
    }
    problems
}

/// Every elementary circle found by a depth-first search (each reported once, from its
/// smallest node).
fn cycles<N: Ord + Clone>(g: &BTreeMap<N, BTreeSet<N>>) -> Vec<Vec<N>> {
    let mut out: Vec<Vec<N>> = Vec::new();
    fn walk<N: Ord + Clone>(
        g: &BTreeMap<N, BTreeSet<N>>,
        start: &N,
        at: &N,
        path: &mut Vec<N>,
        out: &mut Vec<Vec<N>>,
    ) {
        for next in g.get(at).into_iter().flatten() {
            if next == start {
                let mut c = path.clone();
                c.push(start.clone());
                out.push(c);
            } else if next > start && !path.contains(next) && out.len() < 50 {
                path.push(next.clone());
                walk(g, start, next, path, out);
                path.pop();
            }
        }
    }
    for start in g.keys() {
        let mut path = vec![start.clone()];
        walk(g, start, start, &mut path, &mut out);
    }
    out
}

#[test]
fn src_holds_the_dependency_rule() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = read_tree(&root);
    assert!(
        files.len() > 40,
        "read {} files from {}",
        files.len(),
        root.display()
    );
    let problems = check(&files, ALLOWED);
    assert!(
        problems.is_empty(),
        "the dependency rule is broken:\n{}",
        problems.join("\n")
    );
}

fn fake(module: &str, is_mod: bool, source: &str) -> File {
    File {
        module: module.split("::").map(str::to_string).collect(),
        is_mod,
        source: strip_tests_and_comments(source),
        path: PathBuf::from(format!("{module}.rs")),
    }
}

#[test]
fn the_checker_fails_on_an_unlisted_edge_and_a_circle() {
    let allowed: &[(&str, &[&str])] = &[("a", &["b"]), ("b", &[]), ("c", &["a"])];
    // As allowed: a -> b, c -> a; a folder face using its children; a test module ignored.
    let good = vec![
        fake(
            "a",
            true,
            "use crate::b::Thing;\npub use self::x::Y;\nuse x::Z;\n",
        ),
        fake("a::x", false, "use super::Face;\n"),
        fake(
            "b",
            false,
            "#[cfg(test)]\nmod tests {\n    use crate::c::T;\n}\n",
        ),
        fake(
            "c",
            false,
            "fn f() { crate::a::call(); } // crate::b::not_an_edge\n",
        ),
    ];
    assert_eq!(check(&good, allowed), Vec::<String>::new());

    // b -> c is not listed, and makes the circle a -> b -> c -> a.
    let mut bad = good;
    bad[2] = fake("b", false, "use crate::c::{T, U};\n");
    let problems = check(&bad, allowed);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("`b -> c` is not in the allowed list")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p == "module circle: a -> b -> c -> a"),
        "{problems:?}"
    );

    // Two sibling files that use each other.
    let siblings = vec![
        fake("u", true, "mod p; mod q;\n"),
        fake("u::p", false, "use super::q::Q;\n"),
        fake("u::q", false, "fn f(_: super::p::P) {}\n"),
    ];
    assert_eq!(
        check(&siblings, &[("u", &[])]),
        vec!["file circle: u::p -> u::q -> u::p".to_string()]
    );
}
