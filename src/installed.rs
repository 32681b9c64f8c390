//! `sudo: installed`: plugins that need root run from a copy installed on the host, so sudo can be narrowed to
//! one line per plugin. `rune plugin bundle` writes what a host needs — the installed runner
//! (`src/installed.sh`), the shared helpers, the root plugins and a sudoers drop-in — and the mediator runs
//! `sudo -n <dir>/run <plugin>` with the run's request on stdin instead of `sudo -n bash` with the whole runner.
//! The installed runner checks that its copy of the plugin has the sha256 RUNE expects before it runs it, so a
//! host with an older copy answers `precondition_failed` rather than running something else (docs/security.md).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::mediator::{KILL_AFTER_SECS, RunSpec};
use crate::plugins::{Plugin, Registry};
use crate::transport::push_printf_line_literal;

/// Where the bundle is installed unless the inventory says `installed_dir`.
pub const DEFAULT_DIR: &str = "/usr/local/lib/rune";

/// The installed runner's program after its first lines.
const RUNNER_BODY: &str = concat!(include_str!("sweep.sh"), include_str!("exec.sh"), include_str!("installed.sh"));

/// The installed runner for `dir` as `rune plugin bundle` writes it (`<dir>/run`). The dir is written into it:
/// sudo runs a command whose sudoers line pins a digest from a file descriptor (`/dev/fd/N`), so the runner
/// cannot find its dir from its own path. `dir` passed [`check_dir`]: it needs no quoting.
pub fn runner(dir: &Path) -> String {
    format!("#!/bin/bash\nrune_base='{}'\n{RUNNER_BODY}", dir.display())
}

/// A valid install dir (it ends up in command lines and sudoers lines): absolute, normalised, and made of
/// `[A-Za-z0-9._/-]` only.
pub fn check_dir(dir: &str) -> Result<PathBuf, String> {
    let ok_chars = dir.bytes().all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b));
    // Every segment after the leading `/` a plain name (Path::components would hide `.` and `//`).
    let normal = dir.strip_prefix('/').is_some_and(|rest| rest.split('/').all(|s| !matches!(s, "" | "." | "..")));
    if !ok_chars || !normal || dir.len() > 200 {
        return Err(format!(
            "`{}` must be an absolute path without `.`, `..` or a trailing `/`, made of A-Z a-z 0-9 . _ / - (at most 200)",
            dir.escape_debug()
        ));
    }
    Ok(PathBuf::from(dir))
}

/// The run through the installed runner in `dir`: the command (`sudo -n <dir>/run <plugin>`), the request for
/// its stdin, and the cleanup command (`sudo -n <dir>/run --cleanup`, the run id on its stdin).
pub fn command(spec: &RunSpec, dir: &Path, input_json: &[u8]) -> (String, Vec<u8>, String) {
    let run = dir.join("run");
    let command = format!("sudo -n {} {}", run.display(), spec.plugin.name);
    // The run id is a UUID RUNE made and the dir was checked: nothing here needs quoting.
    let cleanup = format!("printf '%s\\n' {} | sudo -n {} --cleanup", spec.run_id, run.display());
    (command, request(spec, input_json).into_bytes(), cleanup)
}

/// The request the installed runner reads (its format is described in `src/installed.sh`).
fn request(spec: &RunSpec, input_json: &[u8]) -> String {
    let mut out = String::with_capacity(input_json.len() * 2 + 512);
    let _ = writeln!(
        out,
        "run {} {} {} {} {} {}",
        spec.run_id,
        spec.plugin.sha256,
        spec.timeout_secs(),
        KILL_AFTER_SECS,
        u8::from(spec.dry_run),
        u8::from(spec.sweep_stale)
    );
    let _ = writeln!(out, "requires {}", spec.plugin.requires.join(" "));
    crate::mediator::each_data_var(spec, |name, value| {
        let _ = write!(out, "var {name} ");
        push_printf_line_literal(&mut out, value);
        out.push('\n');
    });
    out.push_str("input ");
    push_printf_line_literal(&mut out, input_json);
    out.push_str("\nend\n");
    out
}

/// One file of a bundle, relative to the install dir (or, for `sudoers`, beside it).
#[derive(Debug, Clone)]
pub struct BundleFile {
    pub path: PathBuf,
    pub contents: Vec<u8>,
    pub mode: u32,
}

/// What `rune plugin bundle` writes.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub user: String,
    pub plugins: Vec<Arc<Plugin>>,
    pub runner_sha256: String,
    pub files: Vec<BundleFile>,
}

/// The bundle for `names` (every plugin that declares `needs_root` when empty; NAME@VERSION picks a version),
/// installed in `dir`, for RUNE's login user `user`. Every problem is reported.
pub fn bundle(registry: &Registry, names: &[String], user: &str, dir: &str) -> Result<Bundle, Vec<String>> {
    let mut errors = Vec::new();
    let dir = check_dir(dir).map_err(|e| vec![format!("--dir: {e}")])?;
    let user_ok = !user.is_empty()
        && user.len() <= 32
        && user.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b))
        && !user.starts_with('-');
    if !user_ok {
        errors.push(format!("--user `{}` is not a login name (a-z 0-9 _ -, at most 32)", user.escape_debug()));
    }
    let mut plugins: Vec<Arc<Plugin>> = Vec::new();
    if names.is_empty() {
        plugins.extend(registry.latest().filter(|p| p.needs_root).cloned());
        if plugins.is_empty() {
            errors.push("no plugin declares `needs_root: true`: nothing to install".into());
        }
    }
    for name in names {
        match registry.resolve(name) {
            Ok(p) if !p.needs_root => errors.push(format!(
                "{name}: does not declare `needs_root: true`; it runs as the login user without sudo and needs no install"
            )),
            Ok(p) if plugins.iter().any(|q| q.name == p.name) => {
                errors.push(format!("{name}: named twice (a host has one installed copy per plugin)"))
            }
            Ok(p) => plugins.push(p),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    plugins.sort_by(|a, b| a.name.cmp(&b.name));

    let runner = runner(&dir).into_bytes();
    let runner_sha256 = hex(&runner);
    let mut files = vec![BundleFile { path: "run".into(), contents: runner, mode: 0o755 }];
    for lib in registry.lib().iter() {
        files.push(BundleFile { path: Path::new("lib").join(&lib.name), contents: lib.source.to_vec(), mode: 0o644 });
    }
    for p in &plugins {
        let path = Path::new("plugins").join(format!("{}.sh", p.name));
        files.push(BundleFile { path, contents: p.source.to_vec(), mode: 0o644 });
    }
    let mut sums = String::new();
    for f in &files {
        let _ = writeln!(sums, "{}  {}", hex(&f.contents), dir.join(&f.path).display());
    }
    let run = dir.join("run");
    let mut sudoers = format!(
        "# RUNE: plugins that need root, installed in {dir} by `rune plugin bundle`.\n\
         # Install as /etc/sudoers.d/rune (mode 0440, checked with visudo -cf). One line per plugin: {user} may run\n\
         # exactly these as root, with the run's data on stdin, and nothing else. sha256: pins the installed runner,\n\
         # which checks each plugin's sha256 against the one RUNE sends before running it.\n",
        dir = dir.display()
    );
    for p in &plugins {
        let _ = writeln!(sudoers, "{user} ALL=(root) NOPASSWD: sha256:{runner_sha256} {} {}", run.display(), p.name);
    }
    let _ = writeln!(sudoers, "{user} ALL=(root) NOPASSWD: sha256:{runner_sha256} {} --cleanup", run.display());
    files.push(BundleFile { path: "SHA256SUMS".into(), contents: sums.into_bytes(), mode: 0o644 });
    files.push(BundleFile { path: "sudoers".into(), contents: sudoers.into_bytes(), mode: 0o440 });
    Ok(Bundle { dir, user: user.to_owned(), plugins, runner_sha256, files })
}

/// Writes the bundle into `out`, which must not exist yet: first into a sibling temp dir, then renamed, so a
/// failure leaves nothing half-written.
pub fn write(bundle: &Bundle, out: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    if out.symlink_metadata().is_ok() {
        return Err(format!("{}: exists; give a new directory", out.display()));
    }
    let name = out.file_name().ok_or_else(|| format!("{}: not a directory name", out.display()))?;
    let tmp = out.with_file_name(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| -> std::io::Result<()> {
        for f in &bundle.files {
            let path = tmp.join(&f.path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, &f.contents)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))?;
        }
        std::fs::rename(&tmp, out)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        format!("{}: cannot write the bundle: {e}", out.display())
    })
}

fn hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        Registry::load(&[repo.join("plugins"), repo.join("tests/fixtures/plugins")])
    }

    #[test]
    fn dirs_are_absolute_plain_paths() {
        for ok in ["/usr/local/lib/rune", "/opt/rune-1.2/x_y"] {
            assert_eq!(check_dir(ok), Ok(PathBuf::from(ok)));
        }
        for bad in ["", "/", "rel/dir", "/a/../b", "/a/./b", "/a//b", "/a/", "/a b", "/a;id", "/a'b", "/é"] {
            assert!(check_dir(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn a_bundle_has_one_sudoers_line_per_root_plugin_and_the_runner_for_its_dir() {
        let registry = registry();
        let b = bundle(&registry, &[], "rune", "/opt/rune").expect("bundle");
        let names: Vec<&str> = b.plugins.iter().map(|p| p.name.as_str()).collect();
        assert!(names.contains(&"restart-docker") && names.contains(&"whoami-root"), "{names:?}");
        assert!(b.plugins.iter().all(|p| p.needs_root));
        let file = |path: &str| {
            let f = b.files.iter().find(|f| f.path == Path::new(path)).unwrap_or_else(|| panic!("{path}"));
            String::from_utf8(f.contents.clone()).expect("utf-8")
        };
        let run = file("run");
        assert!(run.starts_with("#!/bin/bash\nrune_base='/opt/rune'\n"), "{}", &run[..60]);
        assert_eq!(b.runner_sha256, hex(run.as_bytes()));
        let sudoers = file("sudoers");
        let lines: Vec<&str> = sudoers.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines.len(), b.plugins.len() + 1, "{sudoers}");
        assert!(
            lines
                .contains(&&*format!("rune ALL=(root) NOPASSWD: sha256:{} /opt/rune/run whoami-root", b.runner_sha256))
        );
        assert!(lines.last().is_some_and(|l| l.ends_with("/opt/rune/run --cleanup")));
        assert!(file("SHA256SUMS").contains("  /opt/rune/plugins/restart-docker.sh\n"));
        assert!(b.files.iter().any(|f| f.path == Path::new("lib/bpcs.sh")));
    }

    #[test]
    fn bundles_refuse_what_they_cannot_install() {
        let registry = registry();
        let err = |names: &[&str], user: &str, dir: &str| {
            let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            bundle(&registry, &names, user, dir).expect_err("refused").join("\n")
        };
        assert!(err(&["noop"], "rune", DEFAULT_DIR).contains("does not declare `needs_root: true`"));
        assert!(err(&["nope"], "rune", DEFAULT_DIR).contains("nope"));
        assert!(err(&["whoami-root", "whoami-root"], "rune", DEFAULT_DIR).contains("named twice"));
        assert!(err(&["whoami-root"], "ru ne", DEFAULT_DIR).contains("--user"));
        assert!(err(&["whoami-root"], "rune", "/x/../y").contains("--dir"));
    }

    #[test]
    fn request_values_stay_on_their_line() {
        let out = {
            let mut s = String::new();
            push_printf_line_literal(&mut s, "a\nvar RUNE_LIB /tmp/x\n'\\@".as_bytes());
            s
        };
        assert_eq!(out, "a\\x0avar RUNE_LIB /tmp/x\\x0a\\x27\\x5c\\x40");
    }

    #[test]
    fn bundles_are_written_whole_or_not_at_all() {
        let registry = registry();
        let b = bundle(&registry, &["whoami-root".into()], "rune", DEFAULT_DIR).expect("bundle");
        let tmp = tempfile::tempdir().expect("tempdir");
        let out = tmp.path().join("b");
        write(&b, &out).expect("written");
        assert!(out.join("plugins/whoami-root.sh").is_file() && out.join("sudoers").is_file());
        assert!(write(&b, &out).expect_err("exists").contains("exists"));
        assert_eq!(std::fs::read_dir(tmp.path()).expect("list").count(), 1, "no temp dir left");
    }
}
