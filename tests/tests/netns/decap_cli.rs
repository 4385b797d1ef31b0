//! `lbctl decap attach` on its own, in a network and mount namespace of the test's
//! (`unshare --mount --net`, private propagation): a veth pair `d0`/`d1` (this kernel has no
//! dummy devices; lb_decap goes on `d0`, in generic mode) and a
//! bpffs instance of the namespace's own, so every pin, the link and the interface go when
//! the namespace's shell exits, even when the test fails. No traffic: these check what the
//! command leaves attached.

use lb_tests::lab::lbd::release_binary;
use serde_json::Value;
use std::process::{Command, Stdio};

/// Runs `script` with `sh` in a new network and mount namespace (`$LBCTL` set), after the
/// common setup: `setup` (mounts), then the veth `d0` (10.9.0.1/24) and its peer `d1` up.
/// Returns stdout and stderr.
fn in_namespace(setup: &str, script: &str) -> (String, String) {
    let lbctl = release_binary("lbctl").unwrap_or_else(|e| panic!("lbctl: {e}"));
    let full = format!(
        "set -e\n{setup}\nip link add d0 type veth peer name d1\nip addr add 10.9.0.1/24 dev d0\nip link set d1 up\nip link set d0 up\nset +e\n{script}\n"
    );
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--net",
            "--propagation",
            "private",
            "sh",
            "-c",
            &full,
        ])
        .env("LBCTL", &lbctl)
        .stdin(Stdio::null())
        .output()
        .expect("running unshare (util-linux)");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The text after `== name` up to the next `==` line.
fn section<'a>(out: &'a str, name: &str) -> &'a str {
    let start = out
        .find(&format!("== {name}\n"))
        .unwrap_or_else(|| panic!("no section {name} in the output:\n{out}"))
        + name.len()
        + 4;
    let rest = &out[start..];
    &rest[..rest.find("\n== ").map_or(rest.len(), |i| i + 1)]
}

fn json(out: &str, name: &str) -> Value {
    let s = section(out, name);
    serde_json::from_str(s).unwrap_or_else(|e| panic!("section {name}: not JSON ({e}):\n{s}"))
}

/// Running `decap attach` again replaces the program through the pinned link (same link id:
/// it was never detached, so IPIP never went undecapsulated), with the new lists in force;
/// a re-run that fails (too many addresses; another mode) leaves the attachment as it was.
#[test]
fn decap_reattach_keeps_the_link() {
    lb_tests::fixture::require_root();
    let mut script = String::from(
        "A=\"$LBCTL --output json decap attach d0 --pin-root /sys/fs/bpf/decap --vip 192.0.2.10\"\n\
         echo '== first'; $A --xdp-mode generic --allow-source 10.9.0.2\n\
         echo '== second'; $A --xdp-mode auto --allow-source 10.9.0.3 --vip 192.0.2.11\n\
         echo '== too many'; $A --xdp-mode generic --allow-source 10.9.0.3",
    );
    for i in 1..=65 {
        script.push_str(&format!(" --address 10.8.0.{i}"));
    }
    script.push_str(
        " 2>&1 && echo UNEXPECTED SUCCESS\n\
         echo '== other mode'; $A --xdp-mode native --allow-source 10.9.0.3 2>&1 && echo UNEXPECTED SUCCESS\n\
         echo '== link'; ip link show dev d0\n\
         echo '== third'; $A --allow-source 10.9.0.2\n\
         echo '== stats'; $LBCTL --output json decap stats d0 --pin-root /sys/fs/bpf/decap\n\
         echo '== end'",
    );
    // A bpffs instance of this namespace's own over /sys/fs/bpf.
    let (out, err) = in_namespace("mount -t bpf bpf /sys/fs/bpf", &script);
    let out = format!("{out}\n== stderr\n{err}");
    let first = json(&out, "first");
    assert_eq!(first["replaced"], false, "{out}\n{err}");
    let link = first["link_id"].as_u64().expect("link_id");
    let second = json(&out, "second");
    assert_eq!(
        (second["replaced"].clone(), second["link_id"].as_u64()),
        (Value::Bool(true), Some(link)),
        "a second attach must replace the program through the same link:\n{out}\n{err}"
    );
    assert_eq!(second["sources"], serde_json::json!(["10.9.0.3"]));
    assert_eq!(
        second["vips"],
        serde_json::json!(["192.0.2.10", "192.0.2.11"])
    );
    let too_many = section(&out, "too many");
    assert!(
        too_many.contains("at most 64") && !too_many.contains("UNEXPECTED"),
        "{too_many}"
    );
    let other = section(&out, "other mode");
    assert!(
        other.contains("generic mode") && !other.contains("UNEXPECTED"),
        "{other}"
    );
    let shown = section(&out, "link");
    assert!(
        shown.contains("xdpgeneric") && shown.contains("lb_decap"),
        "the failed re-runs must leave lb_decap attached: {shown}"
    );
    let third = json(&out, "third");
    assert_eq!(
        (third["replaced"].clone(), third["link_id"].as_u64()),
        (Value::Bool(true), Some(link)),
        "after the failed re-runs the same link is still there:\n{out}"
    );
    let stats = json(&out, "stats");
    assert_eq!(stats["drop_source"], 0, "{stats}");
}

/// With `--pin-root` on a bpffs mount other than /sys/fs/bpf (here a tmpfs, not bpffs), the
/// temporary pins of lb_xdp's maps during the load go under that mount too, so the attach
/// works.
#[test]
fn decap_attach_under_another_bpffs() {
    lb_tests::fixture::require_root();
    let (out, err) = in_namespace(
        "mount -t tmpfs lbtest /sys/fs/bpf\nmkdir /sys/fs/bpf/alt\nmount -t bpf bpf /sys/fs/bpf/alt",
        "echo '== attach'; $LBCTL --output json decap attach d0 --xdp-mode generic \
         --pin-root /sys/fs/bpf/alt/decap --vip 192.0.2.10 --allow-source 10.9.0.2 2>&1\n\
         echo '== left'; ls -A /sys/fs/bpf /sys/fs/bpf/alt\n\
         echo '== end'",
    );
    let out = format!("{out}\n== stderr\n{err}");
    let attach = section(&out, "attach");
    let v: Value = serde_json::from_str(attach)
        .unwrap_or_else(|e| panic!("attach under /sys/fs/bpf/alt failed ({e}):\n{out}\n{err}"));
    assert_eq!(v["replaced"], false);
    let left = section(&out, "left");
    assert!(
        !left.contains("lb-private"),
        "a temporary pin directory was left behind: {left}"
    );
}

/// An attachment an older lbctl left, pinned in an older layout (`abi<N>/net<netns>/<iface>/`,
/// named after lb_xdp's ABI version, or an older `lb_decap/v<M>/`), is found by every
/// command: `attach` replaces its program through its pinned link (same link id, no gap) and
/// moves its pins to the current layout, `stats` reads it, `detach` removes it (the program
/// and every directory it leaves empty). One pinned by a newer lbctl (`lb_decap/v<M+1>/`) is
/// refused by `attach` with the way out, and removed by `detach`. The older layouts are made
/// the way an older lbctl leaves them: this lbctl attaches, then the attachment's directory
/// (link and maps) is moved where the older one pinned it.
#[test]
fn decap_takes_over_older_pin_layouts() {
    lb_tests::fixture::require_root();
    let v = lb_common::decap::DECAP_ABI_VERSION;
    let script = format!(
        "R=/sys/fs/bpf/decap\n\
         NS=$(stat -L -c %i /proc/self/ns/net)\n\
         A=\"$LBCTL --output json decap attach d0 --pin-root $R --vip 192.0.2.10\"\n\
         pin_dir() {{ sed -n 's/.*\"pin_dir\": \"\\([^\"]*\\)\".*/\\1/p'; }}\n\
         as_layout() {{ mkdir -p $R/$2/net$NS && mv \"$1\" $R/$2/net$NS/d0; \
         D=$(dirname \"$1\"); rmdir \"$D\" \"$(dirname \"$D\")\" $R/lb_decap 2>/dev/null; true; }}\n\
         echo '== ns'; echo $NS\n\
         echo '== first'; F=$($A --xdp-mode generic --allow-source 10.9.0.2 2>&1); echo \"$F\"\n\
         as_layout \"$(echo \"$F\" | pin_dir)\" abi7\n\
         echo '== legacy'; find $R -mindepth 1 | sort\n\
         echo '== legacy stats'; $LBCTL --output json decap stats d0 --pin-root $R 2>&1\n\
         echo '== adopt'; F=$($A --allow-source 10.9.0.3 2>&1); echo \"$F\"\n\
         echo '== adopted'; find $R -mindepth 1 | sort\n\
         echo '== link'; ip link show dev d0\n\
         as_layout \"$(echo \"$F\" | pin_dir)\" abi6\n\
         echo '== detach'; $LBCTL decap detach d0 --pin-root $R 2>&1\n\
         echo '== detached'; find $R -mindepth 1 | sort; ip link show dev d0\n\
         echo '== stats after'; $LBCTL decap stats d0 --pin-root $R 2>&1 && echo UNEXPECTED SUCCESS\n\
         echo '== own older'; F=$($A --xdp-mode generic --allow-source 10.9.0.2 2>&1); echo \"$F\"\n\
         as_layout \"$(echo \"$F\" | pin_dir)\" lb_decap/v{older}\n\
         echo '== own older adopt'; $A --allow-source 10.9.0.2 2>&1\n\
         $LBCTL decap detach d0 --pin-root $R >/dev/null 2>&1\n\
         echo '== newer'; F=$($A --xdp-mode generic --allow-source 10.9.0.2 2>&1); echo \"$F\"\n\
         as_layout \"$(echo \"$F\" | pin_dir)\" lb_decap/v{newer}\n\
         echo '== newer attach'; $A --allow-source 10.9.0.2 2>&1 && echo UNEXPECTED SUCCESS\n\
         echo '== newer detach'; $LBCTL decap detach d0 --pin-root $R 2>&1\n\
         echo '== newer detached'; find $R -mindepth 1 | sort; ip link show dev d0\n\
         echo '== end'",
        older = v.wrapping_sub(1),
        newer = v + 1,
    );
    let (out, err) = in_namespace("mount -t bpf bpf /sys/fs/bpf", &script);
    let out = format!("{out}\n== stderr\n{err}");
    let ns = section(&out, "ns").trim().to_string();
    let current = format!("/sys/fs/bpf/decap/lb_decap/v{v}/net{ns}/d0");
    let first = json(&out, "first");
    let link = first["link_id"].as_u64().expect("link_id");
    let legacy = section(&out, "legacy");
    assert!(
        legacy.contains(&format!("/sys/fs/bpf/decap/abi7/net{ns}/d0/link\n"))
            && !legacy.contains("lb_decap"),
        "the test's abi7 layout was not made:\n{out}"
    );
    let stats = json(&out, "legacy stats");
    assert_eq!(
        stats["drop_source"], 0,
        "stats must read the abi7 pins:\n{out}"
    );

    let adopt = json(&out, "adopt");
    assert_eq!(
        (
            adopt["replaced"].clone(),
            adopt["link_id"].as_u64(),
            adopt["pin_dir"].as_str(),
            adopt["adopted_from"].as_str(),
        ),
        (
            Value::Bool(true),
            Some(link),
            Some(current.as_str()),
            Some(format!("/sys/fs/bpf/decap/abi7/net{ns}/d0").as_str()),
        ),
        "attach over the abi7 attachment must replace its program through its link and move the pins:\n{out}"
    );
    assert_eq!(adopt["sources"], serde_json::json!(["10.9.0.3"]));
    let adopted = section(&out, "adopted");
    assert!(
        adopted.contains(&format!("{current}/link\n")) && !adopted.contains("abi7"),
        "the pins must be in the current layout only:\n{adopted}"
    );
    let shown = section(&out, "link");
    assert!(
        shown.contains("xdpgeneric") && shown.contains("lb_decap"),
        "{shown}"
    );

    let detach = section(&out, "detach");
    assert!(detach.contains("lb_decap detached from d0"), "{out}");
    let detached = section(&out, "detached");
    assert!(
        !detached.contains("/sys/fs/bpf/decap/") && !detached.contains("xdp"),
        "detach must remove the abi6 attachment (program and pins):\n{detached}"
    );
    let after = section(&out, "stats after");
    assert!(
        after.contains("no decapsulator is attached to d0") && !after.contains("UNEXPECTED"),
        "{after}"
    );

    let own_older = json(&out, "own older");
    let own_older_adopt = json(&out, "own older adopt");
    assert_eq!(
        (
            own_older_adopt["link_id"].as_u64(),
            own_older_adopt["pin_dir"].as_str(),
            own_older_adopt["adopted_from"].as_str(),
        ),
        (
            own_older["link_id"].as_u64(),
            Some(current.as_str()),
            Some(
                format!(
                    "/sys/fs/bpf/decap/lb_decap/v{}/net{ns}/d0",
                    v.wrapping_sub(1)
                )
                .as_str()
            ),
        ),
        "{out}"
    );

    let newer = section(&out, "newer attach");
    assert!(
        newer.contains("attached by a newer lbctl")
            && newer.contains("lbctl decap detach d0")
            && !newer.contains("UNEXPECTED"),
        "{newer}"
    );
    assert!(
        section(&out, "newer detach").contains("lb_decap detached from d0"),
        "{out}"
    );
    let gone = section(&out, "newer detached");
    assert!(
        !gone.contains("/sys/fs/bpf/decap/") && !gone.contains("xdp"),
        "{gone}"
    );
}
