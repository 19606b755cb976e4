//! Errors that point into a file: `file:line:column: message`.
//!
//! `routes.yaml` and the backend's flow files share this one format, so `graygate check`, the
//! reload log line, `POST /admin/reload` (422) and the flow loader all say the same thing the same
//! way. serde_yaml gives a position for errors it finds while reading a node; errors found later
//! (an unknown cluster, a duplicate name) carry a key path such as `rules[3].cluster`, which
//! [`locate`] resolves against the file's text.

use std::fmt;

/// One error at a place in a file. Lines and columns count from 1; 0 means "unknown".
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Located {
    #[serde(skip)]
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// The key path of the node, e.g. `rules[2].split.canary` (empty when unknown).
    pub path: String,
    pub message: String,
}

impl Located {
    pub fn new(file: &str, line: usize, column: usize, path: &str, message: impl Into<String>) -> Self {
        Located { file: file.to_string(), line, column, path: path.to_string(), message: message.into() }
    }

    /// An error for a key path, placed by looking the path up in the file's text.
    pub fn at_path(file: &str, text: &str, path: &str, message: impl Into<String>) -> Self {
        let (line, column) = locate(text, path).unwrap_or((1, 1));
        Located::new(file, line, column, path, message)
    }

    /// Build from a serde_yaml error, keeping its position and dropping serde_yaml's own
    /// " at line L column C" suffix (we print the position in front).
    pub fn from_yaml(file: &str, err: &serde_yaml::Error) -> Self {
        let (line, column) = err.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
        let mut msg = err.to_string();
        if let Some(i) = msg.find(" at line ") {
            msg.truncate(i);
        }
        // serde_yaml prefixes the key path as "a.b[2].c: message"; keep it as the path.
        let (path, message) = match msg.split_once(": ") {
            Some((p, m)) if !p.contains(' ') && !p.is_empty() => (p.to_string(), m.to_string()),
            _ => (String::new(), msg),
        };
        Located { file: file.to_string(), line, column, path, message }
    }
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every error found in one file, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocatedErrors(pub Vec<Located>);

impl LocatedErrors {
    pub fn push(&mut self, e: Located) {
        self.0.push(e);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn sorted(mut self) -> Self {
        self.0.sort_by_key(|e| (e.line, e.column));
        self
    }
}

impl fmt::Display for LocatedErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LocatedErrors {}

/// One step of a key path.
#[derive(Debug, PartialEq, Eq)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn parse_path(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some(stripped) = rest.strip_prefix('[') {
            let Some(end) = stripped.find(']') else { break };
            if let Ok(i) = stripped[..end].parse() {
                out.push(Seg::Index(i));
            }
            rest = &stripped[end + 1..];
        }
    }
    out
}

/// Find the line and column of a key path in a block-style YAML text. It follows indentation,
/// `key:` lines and `- ` sequence items; inside a flow collection (`{ a: 1 }`, `[1, 2]`) it
/// answers the position of the flow's key. Good enough to point a human at the right line;
/// `None` when the path cannot be followed.
pub fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let segs = parse_path(path);
    let lines: Vec<&str> = text.lines().collect();
    // (line index, column of the content) of the node we are inside; start with the document.
    let mut start = 0usize;
    let mut end = lines.len();
    let mut parent_indent: isize = -1;
    let mut found = (1usize, 1usize);
    for seg in segs {
        let mut hit = None;
        match seg {
            Seg::Key(key) => {
                let mut child_indent: Option<usize> = None;
                for (i, line) in lines.iter().enumerate().take(end).skip(start) {
                    let content = strip_comment(line);
                    if content.trim().is_empty() {
                        continue;
                    }
                    let mut indent = content.len() - content.trim_start().len();
                    let mut body = content.trim_start();
                    // A key on the same line as a sequence dash: "- name: x".
                    while let Some(rest) = body.strip_prefix("- ") {
                        indent += 2 + (rest.len() - rest.trim_start().len());
                        body = rest.trim_start();
                    }
                    if (indent as isize) <= parent_indent {
                        break;
                    }
                    let ci = *child_indent.get_or_insert(indent);
                    if indent != ci {
                        // Flow style on the parent line is handled below; deeper lines belong to
                        // another key.
                        continue;
                    }
                    if let Some(k) = body.split(':').next() {
                        let k = k.trim().trim_matches('"').trim_matches('\'');
                        if k == key {
                            hit = Some((i, indent));
                            break;
                        }
                    }
                }
                if hit.is_none() {
                    // Flow mapping on the current line: `fields: { a.b: [x] }`.
                    let line = lines.get(found.0.saturating_sub(1))?;
                    let needle = format!("{key}:");
                    let col = line.find(&needle)?;
                    return Some((found.0, col + 1));
                }
            }
            Seg::Index(n) => {
                let mut count = 0usize;
                let mut item_indent: Option<usize> = None;
                for (i, line) in lines.iter().enumerate().take(end).skip(start) {
                    let content = strip_comment(line);
                    if content.trim().is_empty() {
                        continue;
                    }
                    let indent = content.len() - content.trim_start().len();
                    if (indent as isize) < parent_indent.max(0) && parent_indent >= 0 {
                        break;
                    }
                    let body = content.trim_start();
                    if body.starts_with("- ") || body == "-" {
                        let ii = *item_indent.get_or_insert(indent);
                        if indent != ii {
                            continue;
                        }
                        if count == n {
                            // The item's content starts after "- ".
                            hit = Some((i, indent + 1));
                            break;
                        }
                        count += 1;
                    } else if item_indent.is_some() && indent <= item_indent.unwrap_or(0) {
                        break;
                    }
                }
                if hit.is_none() {
                    // Flow sequence on the current line: `vdn: [101, 200-299]`.
                    let line = lines.get(found.0.saturating_sub(1))?;
                    let open = line.find('[')?;
                    let inner = &line[open + 1..];
                    let mut off = open + 1;
                    for (k, item) in inner.split(',').enumerate() {
                        if k == n {
                            let lead = item.len() - item.trim_start().len();
                            return Some((found.0, off + lead + 1));
                        }
                        off += item.len() + 1;
                    }
                    return None;
                }
            }
        }
        let (i, indent) = hit?;
        found = (i + 1, indent + 1);
        parent_indent = indent as isize;
        start = i + 1;
        // The node spans until the next line indented at or left of it.
        end = lines.len();
        for (j, line) in lines.iter().enumerate().skip(i + 1) {
            let content = strip_comment(line);
            if content.trim().is_empty() {
                continue;
            }
            let ind = content.len() - content.trim_start().len();
            if ind < indent || (ind == indent && !matches!(seg, Seg::Key(_)) && content.trim_start().starts_with("- ")) {
                end = j;
                break;
            }
            if ind == indent && matches!(seg, Seg::Key(_)) && !content.trim_start().starts_with("- ") {
                end = j;
                break;
            }
        }
        // Items of a sequence under a key may sit at the key's own indentation.
        if matches!(seg, Seg::Key(_)) {
            parent_indent = indent as isize - 1;
            // Sequence items under `key:` may be at the same indent; restrict to lines after.
        }
    }
    Some(found)
}

fn strip_comment(line: &str) -> &str {
    // A '#' starts a comment when it is at the start or follows whitespace, outside quotes.
    let bytes = line.as_bytes();
    let mut in_s = false;
    let mut in_d = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\'' if !in_d => in_s = !in_s,
            b'"' if !in_s => in_d = !in_d,
            b'#' if !in_s && !in_d && (i == 0 || bytes[i - 1] == b' ' || bytes[i - 1] == b'\t') => {
                return &line[..i];
            }
            _ => {}
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
listen: 0.0.0.0:8080
clusters:
  stable:
    endpoints: [http://a:1]
  canary:
    embedded: { label: canary }
rules:
  - name: one
    vdn: [101, 200-299]
    cluster: canary
  - name: two   # comment
    split: { canary: 10, stable: 90 }
default: stable
";

    #[test]
    fn locates_keys_and_items() {
        assert_eq!(locate(DOC, "default"), Some((13, 1)));
        assert_eq!(locate(DOC, "clusters.canary"), Some((5, 3)));
        assert_eq!(locate(DOC, "rules[1].name"), Some((11, 5)));
        assert_eq!(locate(DOC, "rules[0].cluster"), Some((10, 5)));
        assert_eq!(locate(DOC, "rules[1].split.canary"), Some((12, 14)));
        assert_eq!(locate(DOC, "rules[0].vdn[1]"), Some((9, 16)));
    }

    #[test]
    fn displays_file_line_column() {
        let e = Located::at_path("routes.yaml", DOC, "rules[0].cluster", "unknown cluster `x`");
        assert_eq!(e.to_string(), "routes.yaml:10:5: rules[0].cluster: unknown cluster `x`");
    }
}
