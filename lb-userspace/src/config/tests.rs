//! Tests of the configuration: golden valid/invalid files and validation rules.

use super::*;

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/testdata")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn valid_configs_load_and_round_trip() {
    let mut files = yaml_files(&testdata().join("valid"));
    files.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/lb.example.yaml"));
    assert!(files.len() >= 4, "expected several valid configs");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let cfg = Config::from_yaml_str(&text, &f.display().to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        let dump = cfg.to_yaml();
        let again = Config::from_yaml_str(&dump, "dump")
            .unwrap_or_else(|e| panic!("dump of {} does not load: {e}\n{dump}", f.display()));
        assert_eq!(again, cfg, "{}", f.display());
        assert_eq!(
            again.to_yaml(),
            dump,
            "dump -> load -> dump differs for {}",
            f.display()
        );
    }
}

#[test]
fn invalid_configs_fail_with_the_golden_message() {
    let files = yaml_files(&testdata().join("invalid"));
    assert!(
        files.len() >= 15,
        "expected at least 15 invalid cases, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let expected_path = f.with_extension("err");
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("missing {}: {e}", expected_path.display()));
        match Config::from_yaml_str(&text, &name) {
            Ok(_) => failures.push(format!("{name}: loaded but must fail")),
            Err(e) => {
                let got = e.to_string();
                if got != expected.trim_end() {
                    failures.push(format!(
                        "{name}:\n  expected: {}\n  got:      {got}",
                        expected.trim_end()
                    ));
                }
                if e.line.is_none() {
                    failures.push(format!("{name}: error has no line: {got}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn durations_parse_and_format() {
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
    assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
    assert!(parse_duration("5").is_err());
    assert!(parse_duration("1.5s").is_err());
    assert!(parse_duration("-1s").is_err());
    assert_eq!(format_duration(Duration::from_secs(600)), "10m");
    assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    assert_eq!(format_duration(Duration::ZERO), "0ms");
}

#[test]
fn locate_finds_nested_keys() {
    let text = "a: 1\nservices:\n  - name: x\n    backends:\n      - address: 1.2.3.4:1\n      - address: 1.2.3.5:1\n        weight: 0\n  - name: y\n    port: 3\n";
    assert_eq!(locate(text, "services[0].backends[1].weight"), Some(7));
    assert_eq!(locate(text, "services[0].backends[1]"), Some(6));
    assert_eq!(locate(text, "services[1].port"), Some(9));
    assert_eq!(locate(text, "services[1].name"), Some(8));
    assert_eq!(locate(text, "a"), Some(1));
    // Missing leaf: the deepest ancestor.
    assert_eq!(locate(text, "services[1].vip"), Some(8));
}

#[test]
fn primes() {
    assert!(is_prime(65537));
    assert!(!is_prime(65536));
    assert_eq!(next_prime(100), 101);
}

#[test]
fn forwarding_values_of_the_dsr_example() {
    let f = testdata().join("valid/dsr.yaml");
    let text = std::fs::read_to_string(&f).unwrap();
    let cfg = Config::from_yaml_str(&text, "dsr.yaml").unwrap_or_else(|e| panic!("{e}"));
    let be = |s: &str| lb_common::ipv4_to_be(s.parse().unwrap());
    let got: Vec<(u32, u32)> = cfg
        .services
        .iter()
        .map(|s| cfg.forwarding_value(s))
        .collect();
    assert_eq!(
        got,
        [
            (lb_common::FORWARDING_DSR, be("10.0.255.2")), // dsr.source
            (lb_common::FORWARDING_DSR, be("10.0.255.3")), // its own dsr_source
            (lb_common::FORWARDING_NAT, 0),
        ]
    );
    // `forwarding: nat` is the default and not dumped: existing configs dump as before.
    assert!(!cfg.to_yaml().contains("forwarding: nat"));
}

/// `announce.include_file` naming the configuration file itself (directly or through another
/// spelling of the path) is refused at load, naming the field; so is (at every load) an
/// include file whose directory does not exist.
#[test]
fn include_file_must_not_be_the_config_file_and_needs_its_directory() {
    let dir = crate::testutil::TempDir::new("include-self");
    let path = dir.path().join("lb.yaml");
    let text = |include: &std::path::Path| {
        format!(
            "interfaces: [eth0]\nsnat:\n  addresses: [10.0.255.1]\nannounce:\n  bird_socket: /run/bird/bird.ctl\n  include_file: {}\nservices:\n  - name: web\n    vip: 192.0.2.10\n    port: 80\n    backends:\n      - address: 10.1.1.2:8080\n",
            include.display()
        )
    };
    for include in [path.clone(), dir.path().join(".").join("lb.yaml")] {
        std::fs::write(&path, text(&include)).unwrap();
        let err = Config::load(&path).unwrap_err();
        assert_eq!(err.path, "announce.include_file", "{err}");
        assert!(
            err.to_string().contains("is this configuration file") && err.line == Some(6),
            "{err}"
        );
    }
    let ok = dir.path().join("bird").join("lb-vips.conf");
    std::fs::write(&path, text(&ok)).unwrap();
    // Checked on every load (lbd's start, a reload, `lbd --check`), not only by `--check`:
    // lbd started or reloaded with it would never announce.
    let err = Config::load(&path).unwrap_err();
    assert_eq!(err.path, "announce.include_file", "{err}");
    assert!(
        err.to_string().contains("does not exist") && err.line == Some(6),
        "{err}"
    );
    std::fs::create_dir(dir.path().join("bird")).unwrap();
    let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    cfg.check_environment().unwrap();
}
