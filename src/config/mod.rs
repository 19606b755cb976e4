//! The config side path: file → raw serde structs → compiled [`Snapshot`].
//!
//! `load` reads, parses and compiles completely, reporting every error with `file:line:column`;
//! it starts nothing (no sockets, no backends), so `graygate check`, `explain` and `diff` use it
//! as it is. Making a snapshot live (pools, publish) is the reloader's job.
//!
//! Every independent error of a file is reported in one run (spec §2): unknown keys are
//! collected while reading (not refused by serde, which would stop at the first), values are
//! [`value::Checked`] and reported by `compile` with the cross-reference checks. Only an error
//! that leaves the rest of the file unreadable stops the run: YAML syntax, a node of the wrong
//! shape (a list where a mapping belongs), or a file over the [`bounds`](MAX_FILE_BYTES).

pub mod compile;
pub mod diff;
pub mod raw;
pub mod reload;
pub mod rollout;
pub mod value;

use std::io::Read;
use std::path::Path;

use crate::located::{Located, LocatedErrors};
use crate::snapshot::Snapshot;

pub use compile::sha256_hex;

/// The largest routes file read (a 40,000-rule file is about 3 MiB).
pub const MAX_FILE_BYTES: usize = 8 * 1024 * 1024;
/// The most YAML nodes a file may have once its aliases are expanded.
pub const MAX_NODES: usize = 1_000_000;
/// The most bytes of scalar text a file may have once its aliases are expanded.
pub const MAX_EXPANDED_BYTES: usize = 4 * MAX_FILE_BYTES;
/// The deepest nesting of mappings and lists (routes.yaml itself needs 6).
pub const MAX_DEPTH: usize = 32;

/// Read a routes file (at most [`MAX_FILE_BYTES`]), as text.
pub fn read(path: &Path) -> Result<String, LocatedErrors> {
    let file = path.display().to_string();
    let fail = |msg: String| LocatedErrors(vec![Located::new(&file, 0, 0, "", msg)]);
    let f = std::fs::File::open(path).map_err(|e| fail(format!("cannot read the file: {e}")))?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read the file: {e}")))?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(LocatedErrors(vec![Located::new(
            &file,
            1,
            1,
            "",
            format!(
                "the file is larger than {} MiB, the most a routes file may be",
                MAX_FILE_BYTES >> 20
            ),
        )]));
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let (line, column) = line_col(&String::from_utf8_lossy(&e.into_bytes()[..at]));
        LocatedErrors(vec![Located::new(
            &file,
            line,
            column,
            "",
            "the file is not UTF-8 text",
        )])
    })
}

/// Read, parse, validate and compile a routes file.
pub fn load(path: &Path) -> Result<Snapshot, LocatedErrors> {
    let text = read(path)?;
    load_str(&text, &path.display().to_string(), path)
}

/// Parse and compile routes from text (`file` names it in errors).
pub fn load_str(text: &str, file: &str, path: &Path) -> Result<Snapshot, LocatedErrors> {
    let (raw, unknown) = parse(text, file)?;
    compile::compile(raw, file, text, path, unknown)
}

/// [`load`] for the tools that look at a file away from where it runs (`check`, `explain`,
/// `diff`): a file the config names (a Secret's token, a certificate) that is not on this
/// machine is a note, not an error ([`compile::Files::MaybeElsewhere`]). Returns the notes.
pub fn load_offline(path: &Path) -> Result<(Snapshot, Vec<Located>), LocatedErrors> {
    let text = read(path)?;
    let file = path.display().to_string();
    let (raw, unknown) = parse(&text, &file)?;
    compile::compile_with(
        raw,
        &file,
        &text,
        path,
        unknown,
        compile::Files::MaybeElsewhere,
    )
}

/// Parse the text into a [`raw::RoutesFile`], with every unknown key found (as errors, not yet
/// sorted). Fails only when the rest of the file cannot be read.
pub fn parse(text: &str, file: &str) -> Result<(raw::RoutesFile, Vec<Located>), LocatedErrors> {
    let one = |e: Located| LocatedErrors(vec![e]);
    if text.len() > MAX_FILE_BYTES {
        return Err(one(Located::new(
            file,
            1,
            1,
            "",
            format!(
                "the file is larger than {} MiB, the most a routes file may be",
                MAX_FILE_BYTES >> 20
            ),
        )));
    }
    if let Some((line, column)) = too_deep(text) {
        return Err(one(Located::new(
            file,
            line,
            column,
            "",
            format!("nesting deeper than {MAX_DEPTH} levels"),
        )));
    }
    // Aliases are expanded while serde reads: a small file can stand for gigabytes. Measure
    // the expansion first, stopping as soon as it is over the bound (a file without `*` has no
    // alias and needs no measuring).
    if text.contains('*') {
        bounds::check(text).map_err(|e| one(refine(Located::from_yaml(file, &e), text)))?;
    }
    let mut unknown = Vec::new();
    let de = serde_yaml::Deserializer::from_str(text);
    let raw: raw::RoutesFile = serde_ignored::deserialize(de, |p| {
        let path = ignored_path(&p);
        let key = match &p {
            serde_ignored::Path::Map { key, .. } => key.clone(),
            _ => path.clone(),
        };
        let mut msg = format!("unknown key `{key}`");
        if let Some(known) = expected_keys(&p) {
            msg.push_str(", expected one of ");
            let list: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
            msg.push_str(&list.join(", "));
        }
        unknown.push(Located::at_path(file, text, &path, msg));
    })
    .map_err(|e| one(refine(Located::from_yaml(file, &e), text)))?;
    Ok((raw, unknown))
}

/// The keys allowed beside an unknown one, read from the JSON Schema of [`raw::RoutesFile`]
/// (so the list cannot drift from the structs).
fn expected_keys(p: &serde_ignored::Path) -> Option<Vec<String>> {
    use serde_ignored::Path as P;
    fn steps<'a>(p: &'a serde_ignored::Path<'a>, out: &mut Vec<Option<&'a str>>) {
        match p {
            P::Root => {}
            P::Seq { parent, .. } => {
                steps(parent, out);
                out.push(None);
            }
            P::Map { parent, key } => {
                steps(parent, out);
                out.push(Some(key));
            }
            P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
                steps(parent, out)
            }
        }
    }
    let P::Map { parent, .. } = p else {
        return None;
    };
    let mut path = Vec::new();
    steps(parent, &mut path);
    let schema = serde_json::to_value(schemars::schema_for!(raw::RoutesFile)).ok()?;
    let null = serde_json::Value::Null;
    let defs = schema.get("definitions").unwrap_or(&null);
    // Follow `$ref` and `anyOf: [T, null]` to the object schema.
    fn resolve<'a>(
        defs: &'a serde_json::Value,
        mut v: &'a serde_json::Value,
    ) -> Option<&'a serde_json::Value> {
        for _ in 0..8 {
            if let Some(r) = v.get("$ref").and_then(|r| r.as_str()) {
                v = defs.get(r.strip_prefix("#/definitions/")?)?;
            } else if let Some(any) = v.get("anyOf").and_then(|a| a.as_array()) {
                v = any.iter().find(|x| x.get("type") != Some(&"null".into()))?;
            } else {
                return Some(v);
            }
        }
        None
    }
    let mut node = resolve(defs, &schema)?;
    for step in path {
        let next = match step {
            None => node.get("items")?,
            Some(k) => match node.get("properties").and_then(|p| p.get(k)) {
                Some(v) => v,
                None => node.get("additionalProperties")?,
            },
        };
        node = resolve(defs, next)?;
    }
    let keys: Vec<String> = node
        .get("properties")?
        .as_object()?
        .keys()
        .cloned()
        .collect();
    Some(keys)
}

/// `clusters.stable.timeuot`, `rules[2].fields` from serde_ignored's path.
fn ignored_path(p: &serde_ignored::Path) -> String {
    use serde_ignored::Path as P;
    match p {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        P::Map { parent, key } => {
            let up = ignored_path(parent);
            if up.is_empty() {
                key.clone()
            } else {
                format!("{up}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}

/// Where flow or block nesting first goes past [`MAX_DEPTH`], read from the text alone (before
/// the YAML parser, which takes quadratic time on deep nesting). Block depth is counted in
/// distinct indentation levels, flow depth in open brackets outside quotes.
fn too_deep(text: &str) -> Option<(usize, usize)> {
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if flow == 0 {
            // Sequence dashes open a level too: `- - - x`.
            let mut indent = line.len() - trimmed.len();
            let mut rest = trimmed;
            loop {
                while indents.last().is_some_and(|&l| l > indent) {
                    indents.pop();
                }
                if indents.last() != Some(&indent) {
                    indents.push(indent);
                }
                if indents.len() > MAX_DEPTH {
                    return Some((i + 1, indent + 1));
                }
                match rest.strip_prefix('-') {
                    Some(r) if r.starts_with([' ', '\t']) => {
                        let r2 = r.trim_start();
                        indent += 1 + (r.len() - r2.len());
                        rest = r2;
                    }
                    _ => break,
                }
            }
        }
        let (mut single, mut double) = (false, false);
        // The last byte that was not a space: a bracket opens a flow node only where a node
        // may start (not inside a plain scalar such as `^[a-z]+$`).
        let mut before = b'\n';
        let bytes = line.as_bytes();
        for (k, &b) in bytes.iter().enumerate() {
            let quoted = single || double;
            match b {
                b'#' if !quoted && (k == 0 || bytes[k - 1] == b' ') => break,
                b'\'' if !double => single = !single,
                b'"' if !single && (k == 0 || bytes[k - 1] != b'\\') => double = !double,
                b'[' | b'{'
                    if !quoted && matches!(before, b'\n' | b':' | b',' | b'-' | b'[' | b'{') =>
                {
                    flow += 1;
                    if indents.len() + flow > MAX_DEPTH {
                        return Some((i + 1, k + 1));
                    }
                }
                b']' | b'}' if !quoted && flow > 0 => flow -= 1,
                _ => {}
            }
            if b != b' ' && b != b'\t' {
                before = b;
            }
        }
    }
    None
}

/// Line and column (from 1) just after `prefix`.
fn line_col(prefix: &str) -> (usize, usize) {
    let line = prefix.matches('\n').count() + 1;
    let column = prefix.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The alias-expansion bound: walk the document as serde will, counting nodes and scalar
/// bytes with aliases expanded, and stop at the first step past the bound.
mod bounds {
    use std::cell::Cell;
    use std::fmt;

    use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

    use super::{MAX_DEPTH, MAX_EXPANDED_BYTES, MAX_NODES};

    struct Budget {
        nodes: Cell<usize>,
        bytes: Cell<usize>,
    }

    #[derive(Clone, Copy)]
    struct Walk<'a> {
        budget: &'a Budget,
        depth: usize,
    }

    impl Walk<'_> {
        fn spend<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
            let n = self.budget.nodes.get() + 1;
            let b = self.budget.bytes.get().saturating_add(bytes);
            self.budget.nodes.set(n);
            self.budget.bytes.set(b);
            if n > MAX_NODES || b > MAX_EXPANDED_BYTES {
                return Err(E::custom(format!(
                    "with its aliases expanded the file is over {MAX_NODES} nodes or {} MiB; write it out or use fewer aliases",
                    MAX_EXPANDED_BYTES >> 20
                )));
            }
            if self.depth > MAX_DEPTH {
                return Err(E::custom(format!("nesting deeper than {MAX_DEPTH} levels")));
            }
            Ok(())
        }
        fn down(self) -> Self {
            Walk {
                budget: self.budget,
                depth: self.depth + 1,
            }
        }
    }

    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any YAML value")
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
            self.spend(1)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
            self.spend(8)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
            self.spend(8)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
            self.spend(8)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
            self.spend(v.len())
        }
        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            self.spend(0)
        }
        fn visit_none<E: de::Error>(self) -> Result<(), E> {
            self.spend(0)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
        fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            self.spend::<A::Error>(0)?;
            while seq.next_element_seed(self.down())?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            self.spend::<A::Error>(0)?;
            while map.next_key_seed(self.down())?.is_some() {
                map.next_value_seed(self.down())?;
            }
            Ok(())
        }
        fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
            use de::VariantAccess;
            let ((), v) = data.variant_seed(self)?;
            v.newtype_variant_seed(self.down())
        }
    }

    /// Ok when the expanded document is within the bounds; else the error where it went past.
    pub fn check(text: &str) -> Result<(), serde_yaml::Error> {
        let budget = Budget {
            nodes: Cell::new(0),
            bytes: Cell::new(0),
        };
        let walk = Walk {
            budget: &budget,
            depth: 0,
        };
        walk.deserialize(serde_yaml::Deserializer::from_str(text))
    }
}

/// serde_yaml places an error raised by a value's own check at the enclosing mapping. When the
/// message quotes the offending text (`like this`), point at that text instead, searching from
/// the reported line on.
pub fn refine(mut e: Located, text: &str) -> Located {
    let Some(start) = e.message.find('`') else {
        return e;
    };
    let Some(len) = e.message[start + 1..].find('`') else {
        return e;
    };
    let needle = &e.message[start + 1..start + 1 + len];
    if needle.is_empty() {
        return e;
    }
    for (i, line) in text.lines().enumerate().skip(e.line.saturating_sub(1)) {
        if let Some(col) = line.find(needle) {
            if i + 1 != e.line || col + 1 > e.column {
                e.line = i + 1;
                e.column = col + 1;
            }
            return e;
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_bounded_before_the_parser() {
        let flow = format!("a: {}1{}\n", "[".repeat(40), "]".repeat(40));
        assert!(too_deep(&flow).is_some());
        let mut block = String::new();
        for d in 0..40 {
            block.push_str(&" ".repeat(d * 2));
            block.push_str(&format!("k{d}:\n"));
        }
        assert_eq!(too_deep(&block).map(|p| p.0), Some(MAX_DEPTH + 1));
        let dashes = format!("a:\n  {}x\n", "- ".repeat(40));
        assert!(too_deep(&dashes).is_some());
        let ok = "clusters:\n  s:\n    endpoints: [http://a:1]\n    health: { path: \"/[x\" }\n    re: ^[a-z]+$ x[\n";
        assert_eq!(too_deep(ok), None);
    }

    #[test]
    fn alias_expansion_is_bounded() {
        // Wide at the base, so that serde_yaml's own bound (alias jumps per event) does not
        // fire first: 10,000 scalars, then four levels of ten aliases = 10^8 nodes.
        let mut y = format!("a0: &a0 [{}]\n", vec!["x"; 10_000].join(", "));
        for i in 1..5 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            y.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let e = bounds::check(&y).unwrap_err();
        assert!(e.to_string().contains("aliases expanded"), "{e}");
        assert!(bounds::check("a: &x [1, 2]\nb: *x\n").is_ok());
    }
}
