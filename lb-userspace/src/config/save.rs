//! Saving the configuration file (`lbctl config save`) and lbd's other atomically written
//! files (BIRD's include file).

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of a configuration file written for the first time: as `docs/operations.md` installs
/// it (it holds no secret; database passwords live in their own files).
pub const CONFIG_MODE: u32 = 0o644;

/// Writes `text` to `path` atomically: a temporary file in the same directory, fsynced, the
/// previous file kept as `<path>.bak`, then a rename over `path`. The new file keeps the
/// permission bits of the file it replaces (the operator's choice), [`CONFIG_MODE`] when there
/// is none.
pub fn save_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(CONFIG_MODE);
    write_atomically(path, text, true, mode)
}

/// A hard-to-guess temporary name beside `name` in `dir`: `.NAME.tmp.<16 hex digits>`.
fn temporary(dir: &Path, name: &str) -> PathBuf {
    let mut buf = [0u8; 8];
    // SAFETY: `buf` is valid and writable for its 8 bytes; the result is checked.
    let got = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    let suffix = if got == buf.len() as isize {
        u64::from_ne_bytes(buf)
    } else {
        // No getrandom: still unique enough, and `create_new` refuses any existing name.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 32)
    };
    dir.join(format!(".{name}.tmp.{suffix:016x}"))
}

/// Writes `text` to `path` so that a reader sees the old file or the new one, never a part:
/// a temporary file in the same directory, fsynced, then renamed over `path` (and the
/// directory fsynced); with `keep_backup` the previous file is first written to `<path>.bak`
/// the same way (a temporary file renamed over it, so a link placed there is never followed).
/// The new file gets permission bits `mode`, whatever the process's umask (lbd may run with
/// `UMask=0077`, and BIRD, running as its own user, must read its include file).
///
/// The temporary file has a random name and is created with `O_CREAT|O_EXCL|O_NOFOLLOW`: it
/// never follows a symbolic link or opens a file someone else placed there.
/// The one atomic writer of lbd (the configuration, BIRD's include file).
pub fn write_atomically(
    path: &Path,
    text: &str,
    keep_backup: bool,
    mode: u32,
) -> std::io::Result<()> {
    write_bytes_atomically(path, text.as_bytes(), keep_backup, mode)
}

/// [`write_atomically`] for bytes. The backup is itself written atomically (a temporary file
/// renamed over `<path>.bak`), so a symbolic link or another file placed at `<path>.bak` is
/// replaced, never written through.
fn write_bytes_atomically(
    path: &Path,
    text: &[u8],
    keep_backup: bool,
    mode: u32,
) -> std::io::Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path has no file name"))?
        .to_string_lossy()
        .to_string();
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut attempt = 0;
    let (tmp, mut f) = loop {
        let tmp = temporary(dir, &name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 8 => {
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    };
    let result = (|| {
        // fchmod on the descriptor: not subject to the umask, unlike the mode at open.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(text)?;
        f.sync_all()?;
        if keep_backup {
            match std::fs::read(path) {
                Ok(old) => {
                    let old_mode = std::fs::metadata(path)
                        .map(|m| m.permissions().mode() & 0o7777)
                        .unwrap_or(mode);
                    write_bytes_atomically(
                        &dir.join(format!("{name}.bak")),
                        &old,
                        false,
                        old_mode,
                    )?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_keeps_a_backup() {
        let dir = std::env::temp_dir().join(format!("lb-save-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lb.yaml");
        save_atomically(&path, "one\n").unwrap();
        assert!(!dir.join("lb.yaml.bak").exists());
        save_atomically(&path, "two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        assert_eq!(
            std::fs::read_to_string(dir.join("lb.yaml.bak")).unwrap(),
            "one\n"
        );
        let leftovers = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 2, "no temporary file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A symbolic link planted at `<path>.bak` is replaced by the backup, not written through
    /// (before, the backup was a `std::fs::copy`, which follows it and overwrote its target).
    #[test]
    fn backup_never_follows_a_symlink() {
        let dir = crate::testutil::TempDir::new("save-bak-link");
        let path = dir.path().join("lb.yaml");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        save_atomically(&path, "one\n").unwrap();
        let bak = dir.path().join("lb.yaml.bak");
        std::os::unix::fs::symlink(&victim, &bak).unwrap();
        save_atomically(&path, "two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        assert!(!std::fs::symlink_metadata(&bak).unwrap().is_symlink());
        assert_eq!(std::fs::read_to_string(&bak).unwrap(), "one\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
    }

    fn mode_of(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    /// The mode is the one asked for under any umask (0077 here, as with systemd's
    /// `UMask=0077`), and a saved configuration keeps the mode of the file it replaces.
    /// Runs in a child process: the umask is per process and other tests create files.
    #[test]
    fn modes_do_not_depend_on_the_umask() {
        if std::env::var_os("LB_SAVE_MODE_CHILD").is_none() {
            let exe = std::env::current_exe().unwrap();
            let out = std::process::Command::new(exe)
                .args([
                    "--exact",
                    "config::save::tests::modes_do_not_depend_on_the_umask",
                    "--nocapture",
                ])
                .env("LB_SAVE_MODE_CHILD", "1")
                .output()
                .unwrap();
            assert!(
                out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        // SAFETY: umask(2) cannot fail; this child process runs only this test.
        unsafe { libc::umask(0o077) };
        let dir = crate::testutil::TempDir::new("save-mode");
        let include = dir.path().join("vips.conf");
        write_atomically(&include, "x\n", false, 0o644).unwrap();
        assert_eq!(mode_of(&include), 0o644);
        let config = dir.path().join("lb.yaml");
        save_atomically(&config, "a\n").unwrap();
        assert_eq!(mode_of(&config), CONFIG_MODE);
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
        save_atomically(&config, "b\n").unwrap();
        assert_eq!(mode_of(&config), 0o640);
    }

    /// A symbolic link planted at the temporary name of the old scheme
    /// (`.NAME.tmp.<pid>`) is neither followed nor written through.
    #[test]
    fn the_temporary_file_follows_no_symlink() {
        let dir = crate::testutil::TempDir::new("save-symlink");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep\n").unwrap();
        let path = dir.path().join("vips.conf");
        let planted = dir
            .path()
            .join(format!(".vips.conf.tmp.{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        write_atomically(&path, "new\n", false, 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        assert!(!std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
