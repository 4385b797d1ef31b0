//! Saving the configuration file (`lbctl config save`).

use std::path::Path;

/// Writes `text` to `path` atomically: a temporary file in the same directory, fsynced, the
/// previous file kept as `<path>.bak`, then a rename over `path`.
pub fn save_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    write_atomically(path, text, true)
}

/// Writes `text` to `path` so that a reader sees the old file or the new one, never a part:
/// a temporary file in the same directory, fsynced, then renamed over `path` (and the
/// directory fsynced); with `keep_backup` the previous file is first copied to `<path>.bak`.
/// The one atomic writer of lbd (the configuration, BIRD's include file).
pub fn write_atomically(path: &Path, text: &str, keep_backup: bool) -> std::io::Result<()> {
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
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if keep_backup && path.exists() {
            std::fs::copy(path, dir.join(format!("{name}.bak")))?;
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
}
