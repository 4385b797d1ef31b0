//! The guard test behind `setup::PACKAGES`: every program the workspace's code starts is
//! installed by the project (a package of that list) or is part of every Debian install or
//! of the Rust toolchain ([`ALLOWED`]), and a program the lab or the demo runs comes from the
//! base set, not only from the bench's.
//!
//! The scanner reads every `*.rs` file of the workspace (not `target/`) with a small Rust
//! tokenizer (comments and string literals are told apart from code) and finds:
//! - `Command::new(P)` (also `std::process::Command::new`, `tokio::process::Command::new`);
//! - calls of the helpers that start a program given by name ([`STARTERS`]);
//! - `ip netns exec NS P` argument lists.
//!
//! `P` is a string literal, a `const` of the same file holding one, or an expression the scanner
//! cannot resolve; such an expression must be in [`PROJECT_BINARIES`] (the project's own
//! binaries, started by path, and the helpers passing their parameter on). A function with a
//! parameter named like a program (`program`, `prog`, `bin`, ...) must be in [`STARTERS`] or
//! [`NOT_STARTERS`], so a new helper cannot start programs unseen.

use crate::setup::{Set, PACKAGES};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Functions that start the program named by one of their arguments (0-based), besides
/// `Command::new` (argument 0).
const STARTERS: &[(&str, usize)] = &[
    // tests/src/lab/sys.rs: `nsenter --net=/run/netns/NS -- program`.
    ("ns_command", 1),
    // tests/src/lab/sys.rs: runs `ns_command(ns, program)`.
    ("ns_run", 1),
    // tests/src/lab/topology.rs: `ns_run` in the client or the balancer namespace.
    ("client_run", 0),
    ("balancer_run", 0),
    // tests/src/lab/topology.rs: `ns_run` in a backend's namespace (backend index first).
    ("backend_run", 1),
    // lb-userspace/tests/postgres_probe.rs: runs /usr/lib/postgresql/15/bin/PROGRAM as the
    // postgres user in the test's namespace.
    ("pg_run", 1),
    // tests/src/lab/postgres.rs: `nsenter --net=.. --setuid postgres -- program` and the
    // cluster's method running it for one member.
    ("pg_command", 1),
    ("run_pg", 1),
    // tests/src/lab/topology.rs: `lb-testsrv` (its path) in a namespace.
    ("spawn_testsrv", 1),
];

/// Functions with a parameter named like a program that start nothing.
const NOT_STARTERS: &[&str] = &[
    // tests/src/bench/alt.rs: looks the program up on the PATH.
    "on_path",
    // xtask/src/setup.rs: looks the program up on the PATH and in the sbin directories.
    "program_found",
];

/// Parameter names that say "this is a program to start".
const PROGRAM_PARAMS: &[&str] = &["program", "prog", "bin", "binary", "exe", "executable"];

/// Types a program name or path comes in (a `program: &mut Xdp` is a BPF program).
const NAME_TYPES: &[&str] = &["str", "String", "OsStr", "OsString", "Path", "PathBuf"];

/// Programs no package of `setup::PACKAGES` needs to provide, and why.
const ALLOWED: &[(&str, &str)] = &[
    // Essential packages: every Debian install has them, dpkg refuses to remove them.
    ("sh", "dash (Essential)"),
    ("cat", "coreutils (Essential)"),
    ("date", "coreutils (Essential)"),
    ("uname", "coreutils (Essential)"),
    ("nsenter", "util-linux (Essential)"),
    ("unshare", "util-linux (Essential)"),
    ("runuser", "util-linux (Essential)"),
    ("dpkg-query", "dpkg (Essential)"),
    // The package manager setup installs with: priority required, in every Debian install.
    (
        "apt-get",
        "apt (priority required; setup itself installs with it)",
    ),
    // The Rust toolchain: a prerequisite of `cargo xtask` itself.
    ("cargo", "the Rust toolchain (prerequisite)"),
    ("rustup", "the Rust toolchain (prerequisite)"),
    // The repository is a clone; the bench names its results by commit and says `unknown`
    // without git.
    (
        "git",
        "the repository was cloned with it (the bench falls back to `unknown`)",
    ),
    // Installed by setup itself (`cargo install bpf-linker`), not by a Debian package.
    (
        "bpf-linker",
        "installed by `cargo xtask setup` (cargo install)",
    ),
    // setup disables the services of bench packages with it only when it exists (a host
    // without systemd has no service units to disable).
    ("systemctl", "systemd; setup runs it only when present"),
];

/// Expressions that start the project's own binaries by path, or pass a helper's parameter
/// on (its call sites are checked instead), by file.
const PROJECT_BINARIES: &[(&str, &str)] = &[
    ("xtask/src/demo.rs", "&demo"), // target/release/lb-demo
    ("xtask/src/bench.rs", "&bin"), // target/release/lb-bench
    // target/release/lb-bench-compare
    (
        "xtask/src/compare.rs",
        "repo.join(\"target/release/lb-bench-compare\")",
    ),
    // an lb-bench of some revision (target/bench-compare/bin/lb-bench-<hash>)
    ("tests/src/bench/compare.rs", "&build.bench"),
    ("tests/src/lab/lbd.rs", "&self.lbd_bin"), // target/release/lbd
    ("tests/src/lab/lbd.rs", "&self.lbctl_bin"), // target/release/lbctl
    ("tests/src/lab/topology.rs", "bin"),      // spawn_testsrv passes its parameter on
    ("tests/src/lab/topology.rs", "&self.testsrv_bin"), // target/release/lb-testsrv
    ("tests/src/lab/scale_out.rs", "&testsrv"), // target/release/lb-testsrv
    ("tests/src/bench/alt.rs", "&lbctl"),      // target/release/lbctl (decap detach)
    ("tests/src/lab/topology.rs", "&lbctl"),   // target/release/lbctl
    ("tests/tests/netns/dsr.rs", "&lbctl"),    // target/release/lbctl (decap detach)
    ("tests/tests/netns.rs", "env!(\"CARGO_BIN_EXE_lb-demo\")"),
    ("tests/tests/netns_db.rs", "env!(\"CARGO_BIN_EXE_lb-demo\")"),
    (
        "tests/tests/netns_scale.rs",
        "env!(\"CARGO_BIN_EXE_lb-demo\")",
    ),
    // The test re-executes itself to check file modes under another umask.
    ("lb-userspace/src/config/save.rs", "exe"),
    (
        "lb-userspace/tests/lbd_logs.rs",
        "env!(\"CARGO_BIN_EXE_lbd\")",
    ),
    // The test re-executes itself as the child lbd that runs under a low RLIMIT_NOFILE.
    (
        "lb-userspace/tests/local_abuse.rs",
        "std::env::current_exe().unwrap()",
    ),
    ("tests/src/lab/sys.rs", "program"), // ns_command / ns_run pass their parameter on
    ("tests/src/lab/topology.rs", "program"), // client_run / balancer_run
    ("tests/src/lab/postgres.rs", "program"), // pg_command / run_pg
    // The operator's own `db_clusters[].promote.command` (docs/database.md); setup installs
    // nothing for it.
    ("lb-userspace/src/db/supervisor.rs", "program"),
    // `announce.birdc` (docs/configuration.md): `birdc` by default, from bird2 (base set);
    // the netns BGP scenarios run that default.
    ("lb-userspace/src/announce/bird.rs", "birdc"),
];

/// Files that may run programs of the bench set: the bench itself. Everything else (the lab,
/// the demo, the tests, xtask) runs after `cargo xtask setup`, which installs the base set only.
fn may_use_bench_set(path: &str) -> bool {
    path.starts_with("tests/src/bench/")
        || path == "tests/src/bin/lb-bench.rs"
        || path == "xtask/src/bench.rs"
}

/// What a call site starts.
#[derive(Debug, PartialEq, Eq)]
enum Program {
    /// A program by name (the last path component of a string literal or of a `const`).
    Named(String),
    /// An expression the scanner cannot resolve, as written (without spaces).
    Expr(String),
}

/// A place that starts a program, or declares a function that may.
#[derive(Debug, PartialEq, Eq)]
enum Finding {
    Exec {
        line: usize,
        program: Program,
    },
    /// A function with a program-like parameter (must be a known starter or non-starter).
    Helper {
        line: usize,
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Str(String),
    Punct(char),
}

/// Rust tokens with their line numbers: identifiers (also numbers and lifetimes), string
/// literals (content as written; raw and byte strings too), single punctuation characters.
/// Comments and char literals are dropped.
fn tokenize(src: &str) -> Vec<(usize, Tok)> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    let is_ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if ch == '"' {
            let start_line = line;
            i += 1;
            let start = i;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                if c.get(i) == Some(&'\n') {
                    line += 1;
                }
                i += 1;
            }
            out.push((
                start_line,
                Tok::Str(c[start..i.min(c.len())].iter().collect()),
            ));
            i += 1;
        } else if ch == '\'' {
            if c.get(i + 1) == Some(&'\\') {
                // An escaped char literal: '\n', '\'', '\u{..}'.
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3; // 'x'
            } else {
                // A lifetime or label.
                let start = i;
                i += 1;
                while i < c.len() && is_ident(c[i]) {
                    i += 1;
                }
                out.push((line, Tok::Ident(c[start..i].iter().collect())));
            }
        } else if is_ident(ch) {
            let start = i;
            while i < c.len() && is_ident(c[i]) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let raw = (word == "r" || word == "br")
                && matches!(c.get(i), Some('"') | Some('#'))
                && c[i..].iter().find(|&&x| x != '#') == Some(&'"');
            if raw {
                let hashes = c[i..].iter().take_while(|&&x| x == '#').count();
                let start_line = line;
                i += hashes + 1;
                let start = i;
                let closing: Vec<char> = std::iter::once('"')
                    .chain(std::iter::repeat_n('#', hashes))
                    .collect();
                while i < c.len() && !c[i..].starts_with(&closing) {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
                out.push((
                    start_line,
                    Tok::Str(c[start..i.min(c.len())].iter().collect()),
                ));
                i += closing.len();
            } else if word == "b" && c.get(i) == Some(&'\'') {
                // A byte literal b'x' / b'\n': skip it like a char literal.
                i += 1;
                if c.get(i) == Some(&'\\') {
                    i += 1;
                }
                i += 1;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if word != "b" || c.get(i) != Some(&'"') {
                out.push((line, Tok::Ident(word)));
            }
            // b"...": the string literal follows as its own token.
        } else {
            out.push((line, Tok::Punct(ch)));
            i += 1;
        }
    }
    out
}

/// The top-level comma-separated elements from `toks[start..]` up to the unmatched closing
/// bracket, as token ranges.
fn split_list(toks: &[(usize, Tok)], start: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut begin = start;
    let mut i = start;
    while i < toks.len() {
        match toks[i].1 {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                if depth == 0 {
                    break;
                }
                depth -= 1;
            }
            Tok::Punct(',') if depth == 0 => {
                out.push(begin..i);
                begin = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if begin < i {
        out.push(begin..i);
    }
    out
}

fn render(toks: &[(usize, Tok)]) -> String {
    toks.iter()
        .map(|(_, t)| match t {
            Tok::Ident(s) => s.clone(),
            Tok::Str(s) => format!("\"{s}\""),
            Tok::Punct(c) => c.to_string(),
        })
        .collect()
}

/// The `const NAME: &str = "value";` items of a file.
fn string_consts(toks: &[(usize, Tok)]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (i, (_, t)) in toks.iter().enumerate() {
        if *t != Tok::Ident("const".into()) {
            continue;
        }
        let Some((_, Tok::Ident(name))) = toks.get(i + 1) else {
            continue;
        };
        let eq = toks[i..]
            .iter()
            .position(|(_, t)| matches!(t, Tok::Punct('=' | ';')))
            .map(|p| i + p);
        if let Some(eq) = eq {
            if let (Tok::Punct('='), Some((_, Tok::Str(v))), Some((_, Tok::Punct(';')))) =
                (&toks[eq].1, toks.get(eq + 1), toks.get(eq + 2))
            {
                out.insert(name.clone(), v.clone());
            }
        }
    }
    out
}

fn program_of(arg: &[(usize, Tok)], consts: &BTreeMap<String, String>) -> Program {
    let named = |s: &str| Program::Named(s.rsplit('/').next().unwrap_or(s).to_string());
    match arg {
        [(_, Tok::Str(s))] => named(s),
        [(_, Tok::Ident(id))] if consts.contains_key(id) => named(&consts[id]),
        _ => Program::Expr(render(arg)),
    }
}

/// Everything in `src` that starts a program or may (see the module comment).
fn scan(src: &str) -> Vec<Finding> {
    let toks = tokenize(src);
    let consts = string_consts(&toks);
    let mut out = Vec::new();
    let ident = |i: usize| match toks.get(i) {
        Some((_, Tok::Ident(s))) => Some(s.as_str()),
        _ => None,
    };
    let punct = |i: usize, c: char| matches!(toks.get(i), Some((_, Tok::Punct(p))) if *p == c);
    let exec_arg = |open: usize, index: usize, out: &mut Vec<Finding>| {
        let args = split_list(&toks, open + 1);
        if let Some(r) = args.get(index) {
            let line = toks[r.start].0;
            out.push(Finding::Exec {
                line,
                program: program_of(&toks[r.clone()], &consts),
            });
        }
    };
    for i in 0..toks.len() {
        // Command::new(
        if ident(i) == Some("Command")
            && punct(i + 1, ':')
            && punct(i + 2, ':')
            && ident(i + 3) == Some("new")
            && punct(i + 4, '(')
        {
            exec_arg(i + 4, 0, &mut out);
        }
        // helper(  (not its definition `fn helper(`)
        if let Some(name) = ident(i) {
            if punct(i + 1, '(') && (i == 0 || ident(i - 1) != Some("fn")) {
                if let Some(&(_, index)) = STARTERS.iter().find(|(s, _)| *s == name) {
                    exec_arg(i + 1, index, &mut out);
                }
            }
        }
        // "netns", "exec", NS, PROGRAM
        if toks[i].1 == Tok::Str("netns".into())
            && punct(i + 1, ',')
            && toks.get(i + 2).map(|t| &t.1) == Some(&Tok::Str("exec".into()))
            && punct(i + 3, ',')
        {
            let elems = split_list(&toks, i + 4);
            if let Some(r) = elems.get(1) {
                out.push(Finding::Exec {
                    line: toks[r.start].0,
                    program: program_of(&toks[r.clone()], &consts),
                });
            }
        }
        // fn name<..>(param: .., ..)
        if ident(i) == Some("fn") {
            let Some(name) = ident(i + 1) else { continue };
            let Some(open) = (i + 2..toks.len()).find(|&j| punct(j, '(')) else {
                continue;
            };
            let takes_program = split_list(&toks, open + 1).iter().any(|r| {
                matches!(&toks[r.clone()], [(_, Tok::Ident(p)), (_, Tok::Punct(':')), ty @ ..]
                    if PROGRAM_PARAMS.contains(&p.as_str())
                        && ty.iter().any(|(_, t)| matches!(t, Tok::Ident(x) if NAME_TYPES.contains(&x.as_str()))))
            });
            if takes_program {
                out.push(Finding::Helper {
                    line: toks[i].0,
                    name: name.to_string(),
                });
            }
        }
    }
    out
}

/// Every `*.rs` file under `dir`, skipping `target` and hidden directories.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&p, out);
            }
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

/// The problems of one file's findings (`path` relative to the workspace root), as
/// `path:line: what` lines.
fn problems(path: &str, findings: &[Finding]) -> Vec<String> {
    let mut out = Vec::new();
    for f in findings {
        match f {
            Finding::Exec {
                line,
                program: Program::Named(prog),
            } => {
                if ALLOWED.iter().any(|(a, _)| a == prog) {
                    continue;
                }
                match PACKAGES
                    .iter()
                    .find(|p| p.programs.contains(&prog.as_str()))
                {
                    None => out.push(format!(
                        "{path}:{line}: runs `{prog}`, which no package of setup::PACKAGES \
                         provides: add its Debian package there (or, if every Debian install \
                         has it, to ALLOWED in xtask/src/programs.rs)"
                    )),
                    Some(p) if p.set == Set::Bench && !may_use_bench_set(path) => {
                        out.push(format!(
                            "{path}:{line}: runs `{prog}` of Debian package {}, which only the \
                             bench set installs, but this code runs after `cargo xtask setup` \
                             (base set): move {} to Set::Base",
                            p.name, p.name
                        ));
                    }
                    Some(_) => {}
                }
            }
            Finding::Exec {
                line,
                program: Program::Expr(e),
            } => {
                if !PROJECT_BINARIES.iter().any(|(f, x)| *f == path && x == e) {
                    out.push(format!(
                        "{path}:{line}: starts `{e}`, which the scanner cannot resolve: pass the \
                         program's name as a string literal or a const, or add ({path:?}, {e:?}) \
                         to PROJECT_BINARIES in xtask/src/programs.rs if it is one of lb's own \
                         binaries"
                    ));
                }
            }
            Finding::Helper { line, name } => {
                let known = STARTERS.iter().any(|(s, _)| s == name)
                    || NOT_STARTERS.contains(&name.as_str());
                if !known {
                    out.push(format!(
                        "{path}:{line}: fn {name} takes a program parameter: add it to STARTERS \
                         (with the index of that argument) or NOT_STARTERS in \
                         xtask/src/programs.rs"
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(line: usize, p: &str) -> Finding {
        Finding::Exec {
            line,
            program: Program::Named(p.into()),
        }
    }

    #[test]
    fn scanner_finds_every_way_of_starting_a_program() {
        let src = r##"
const NFT: &str = "/usr/sbin/nft";
// Command::new("in-a-comment") is not code
/* nor Command::new("in-a-block") /* nested */ here */
fn f() {
    let s = "Command::new(\"in-a-string\")";
    let r = r#"ns_run(ns, "in-a-raw-string", &[])"#;
    let c = '"';
    Command::new("frobnicate").arg("x");
    std::process::Command::new(NFT)
        .status();
    sys::ns_run(lab.balancer_ns(), "conntrack", &["-F"]);
    ns_command(
        &ns,
        "haproxy",
    );
    l.client_run("wrk", &["-c", "1"]);
    Command::new("ip").args(["netns", "exec", &self.name, "sh", "-c", "true"]);
    Command::new(&self.lbd_bin);
}
fn ns_run(ns: &str, program: &str, args: &[&str]) {}
fn helper<T>(x: T, prog: &str) {}
fn attach(program: &mut Xdp) {}
fn start(bin: impl AsRef<std::ffi::OsStr>) {}
"##;
        assert_eq!(
            scan(src),
            vec![
                named(9, "frobnicate"),
                named(10, "nft"),
                named(12, "conntrack"),
                named(15, "haproxy"),
                named(17, "wrk"),
                named(18, "ip"),
                named(18, "sh"),
                Finding::Exec {
                    line: 19,
                    program: Program::Expr("&self.lbd_bin".into())
                },
                Finding::Helper {
                    line: 21,
                    name: "ns_run".into()
                },
                Finding::Helper {
                    line: 22,
                    name: "helper".into()
                },
                Finding::Helper {
                    line: 24,
                    name: "start".into()
                },
            ]
        );
    }

    #[test]
    fn unknown_programs_bench_programs_outside_the_bench_and_unknown_helpers_fail() {
        let src = r#"
fn f() {
    Command::new("frobnicate");
    Command::new("nft");
    ns_run(ns, "bpftool", &[]);
    Command::new("cargo");
    Command::new(&bin);
}
fn spawn_tool(prog: &str) {}
"#;
        let found = scan(src);
        let lab = problems("tests/src/lab/x.rs", &found);
        assert_eq!(lab.len(), 4, "{lab:#?}");
        assert!(lab[0].starts_with("tests/src/lab/x.rs:3: runs `frobnicate`, which no package"));
        assert!(lab[1].starts_with(
            "tests/src/lab/x.rs:5: runs `bpftool` of Debian package bpftool, which only the bench"
        ));
        assert!(lab[2].starts_with("tests/src/lab/x.rs:7: starts `&bin`"));
        assert!(lab[3].starts_with("tests/src/lab/x.rs:9: fn spawn_tool takes a program parameter"));
        // In the bench, bpftool is fine; `&bin` is lb-bench's path in xtask's bench.rs.
        let bench = problems("xtask/src/bench.rs", &found);
        assert_eq!(bench.len(), 2, "{bench:#?}");
        assert!(bench[0].contains("`frobnicate`"));
        assert!(bench[1].contains("spawn_tool"));
    }

    /// The guard: every program the workspace starts is installed by setup (or allowed), and
    /// every program setup's list claims is one the workspace starts.
    #[test]
    fn every_program_the_workspace_starts_is_installed_by_setup() {
        let root = crate::build::root();
        let mut files = Vec::new();
        rust_files(&root, &mut files);
        assert!(
            files.len() > 20,
            "found only {} .rs files under {}",
            files.len(),
            root.display()
        );
        let mut errors = Vec::new();
        let mut started = std::collections::BTreeSet::new();
        let mut helpers = std::collections::BTreeSet::new();
        let mut exprs = std::collections::BTreeSet::new();
        for file in &files {
            let rel = file
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let src = std::fs::read_to_string(file).unwrap();
            let found = scan(&src);
            for f in &found {
                match f {
                    Finding::Exec {
                        program: Program::Named(p),
                        ..
                    } => {
                        started.insert(p.clone());
                    }
                    Finding::Helper { name, .. } => {
                        helpers.insert(name.clone());
                    }
                    Finding::Exec {
                        program: Program::Expr(e),
                        ..
                    } => {
                        exprs.insert((rel.clone(), e.clone()));
                    }
                }
            }
            errors.extend(problems(&rel, &found));
        }
        println!("programs the workspace starts: {started:?}");
        for name in STARTERS
            .iter()
            .map(|(s, _)| *s)
            .chain(NOT_STARTERS.iter().copied())
        {
            if !helpers.contains(name) {
                errors.push(format!(
                    "STARTERS or NOT_STARTERS lists fn {name}, which no longer takes a program \
                     parameter: remove it"
                ));
            }
        }
        for (file, e) in PROJECT_BINARIES {
            if !exprs.contains(&(file.to_string(), e.to_string())) {
                errors.push(format!(
                    "PROJECT_BINARIES lists `{e}` in {file}, which starts nothing there: remove it"
                ));
            }
        }
        for p in PACKAGES {
            for prog in p.programs {
                if !started.contains(*prog) {
                    errors.push(format!(
                        "setup::PACKAGES lists `{prog}` for {} but nothing in the workspace runs \
                         it: remove it (or the package)",
                        p.name
                    ));
                }
            }
        }
        for (prog, _) in ALLOWED {
            if !started.contains(*prog) {
                errors.push(format!(
                    "ALLOWED lists `{prog}` but nothing runs it: remove it"
                ));
            }
        }
        assert!(errors.is_empty(), "\n{}\n", errors.join("\n"));
    }
}
