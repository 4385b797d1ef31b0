//! Locating errors in the YAML text: serde_yaml errors mapped to a [`ConfigError`] with line
//! and key path, and [`locate`], a small indentation-based walker that finds the line of a key
//! path in block-style YAML.

use super::*;

/// Converts a serde_yaml error into a [`ConfigError`] with line and key path.
pub(super) fn yaml_error(e: &serde_yaml::Error, text: &str) -> ConfigError {
    let mut msg = e.to_string();
    // The location is reported separately; drop serde_yaml's " at line N column M" suffix.
    if let Some(idx) = msg.rfind(" at line ") {
        if msg[idx..].contains(" column ") {
            msg.truncate(idx);
        }
    }
    // serde_yaml prefixes the key path ("services[0].port: ..."); split it off.
    let (path, message) = match msg.split_once(": ") {
        Some((p, m)) if !p.contains(' ') && !p.is_empty() => (p.to_string(), m.to_string()),
        _ => (String::new(), msg.clone()),
    };
    let mut err = ConfigError {
        file: None,
        line: e.location().map(|l| l.line()),
        path,
        message,
    };
    refine_duration_error(&mut err, text);
    err
}

/// serde reports a bad duration at the enclosing mapping; point at the duration key itself.
fn refine_duration_error(err: &mut ConfigError, text: &str) {
    let Some(rest) = err.message.strip_prefix("invalid duration \"") else {
        return;
    };
    let Some(bad) = rest.split('"').next() else {
        return;
    };
    let lines: Vec<&str> = text.lines().collect();
    for key in [
        "interval",
        "timeout",
        "after",
        "syn_timeout",
        "syn_recv_timeout",
        "established_timeout",
        "fin_wait_timeout",
        "close_wait_timeout",
        "last_ack_timeout",
        "time_wait_timeout",
        "close_timeout",
    ] {
        let path = if err.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", err.path)
        };
        let Some(line) = locate(text, &path) else {
            continue;
        };
        let value = lines[line - 1]
            .split_once(':')
            .map(|(_, v)| {
                v.split(" #")
                    .next()
                    .unwrap_or("")
                    .trim()
                    .trim_matches(['"', '\''])
            })
            .unwrap_or("");
        let key_here = lines[line - 1]
            .trim_start()
            .trim_start_matches("- ")
            .starts_with(key);
        if key_here && value == bad {
            err.path = path;
            err.line = Some(line);
            return;
        }
    }
}

/// Finds the 1-based line of the node at key path `path` (e.g. `services[1].backends[0].weight`)
/// in block-style YAML `text`; falls back to the deepest ancestor found.
pub fn locate(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut region = Region {
        start: 0,
        end: lines.len(),
        col: None,
    };
    let mut found = None;
    for seg in parse_path(path) {
        let next = match seg {
            PathSeg::Key(k) => find_key(&lines, &region, &k),
            PathSeg::Index(i) => find_index(&lines, &region, i),
        };
        match next {
            Some((line, r)) => {
                found = Some(line + 1);
                match r {
                    Some(r) => region = r,
                    None => break,
                }
            }
            None => break,
        }
    }
    found
}

enum PathSeg {
    Key(String),
    Index(usize),
}

fn parse_path(path: &str) -> Vec<PathSeg> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !key.is_empty() {
            out.push(PathSeg::Key(key.to_string()));
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(PathSeg::Index(i));
            }
        }
    }
    out
}

/// Lines `[start, end)` holding a node's block content; `col` is the column of its mapping
/// keys or sequence dashes (unknown until the first content line is seen).
struct Region {
    start: usize,
    end: usize,
    col: Option<usize>,
}

fn is_content(line: &str) -> bool {
    let t = line.trim_start();
    !t.is_empty() && !t.starts_with('#') && t != "---"
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Columns at which a node may start on this line: the first non-space column and, after
/// each leading `- `, the column after it.
fn starts(line: &str) -> Vec<usize> {
    let mut cols = vec![indent(line)];
    let mut c = indent(line);
    while line[c..].starts_with("- ") || &line[c..] == "-" {
        c += 1;
        c += line[c..].len() - line[c..].trim_start_matches(' ').len();
        cols.push(c);
    }
    cols
}

fn first_col(lines: &[&str], r: &Region) -> Option<usize> {
    r.col.or_else(|| {
        lines[r.start..r.end]
            .iter()
            .find(|l| is_content(l))
            .map(|l| indent(l))
    })
}

/// End (exclusive) of the block that starts after line `from` and is indented deeper than
/// `col` (or is a sequence at `col` when `seq_at_col`).
fn block_end(lines: &[&str], from: usize, end: usize, col: usize, seq_at_col: bool) -> usize {
    for (i, line) in lines.iter().enumerate().take(end).skip(from + 1) {
        if !is_content(line) {
            continue;
        }
        let ind = indent(line);
        if ind < col || (ind == col && !(seq_at_col && line[ind..].starts_with('-'))) {
            return i;
        }
    }
    end
}

fn value_region(
    lines: &[&str],
    line: usize,
    key_col: usize,
    after: &str,
    end: usize,
) -> Option<Region> {
    let after = after.trim();
    if !after.is_empty() && !after.starts_with('#') {
        return None; // inline scalar or flow collection: cannot descend further
    }
    let next = (line + 1..end).find(|&i| is_content(lines[i]))?;
    let seq_at_col = indent(lines[next]) == key_col && lines[next].trim_start().starts_with('-');
    if indent(lines[next]) < key_col || (indent(lines[next]) == key_col && !seq_at_col) {
        return None;
    }
    Some(Region {
        start: next,
        end: block_end(lines, line, end, key_col, seq_at_col),
        col: Some(indent(lines[next])),
    })
}

fn find_key(lines: &[&str], r: &Region, key: &str) -> Option<(usize, Option<Region>)> {
    let col = first_col(lines, r)?;
    // Mapping keys of this node sit at `col`, or right after a dash when the node is a
    // sequence item whose first key shares the dash's line.
    for i in r.start..r.end {
        let line = lines[i];
        if !is_content(line) {
            continue;
        }
        for c in starts(line) {
            if c != col && !(i == r.start && c > col) {
                continue;
            }
            let rest = &line[c..];
            for k in [key.to_string(), format!("\"{key}\""), format!("'{key}'")] {
                if let Some(after) = rest.strip_prefix(&k) {
                    if let Some(after) = after.trim_start().strip_prefix(':') {
                        if after.is_empty() || after.starts_with(' ') {
                            return Some((i, value_region(lines, i, c, after, r.end)));
                        }
                    }
                }
            }
        }
    }
    None
}

fn find_index(lines: &[&str], r: &Region, idx: usize) -> Option<(usize, Option<Region>)> {
    let col = first_col(lines, r)?;
    let mut n = 0;
    for i in r.start..r.end {
        let line = lines[i];
        if !is_content(line) || indent(line) != col || !line[col..].starts_with('-') {
            continue;
        }
        if n == idx {
            let item_col = starts(line).get(1).copied();
            let end = block_end(lines, i, r.end, col, false);
            let region = item_col.map(|c| Region {
                start: i,
                end,
                col: Some(c),
            });
            return Some((i, region));
        }
        n += 1;
    }
    None
}
