//! The .deb and .rpm built by `packaging/build`: their files, control data
//! and scripts, lintian, an `rpm -i --root` smoke install, and the .deb
//! installed with `dpkg -i` under a real systemd (packaging/test/deb-in-box.sh
//! over the tests/systemd harness): enable --now from the shipped example,
//! upgrade without a restart, fstab `mount -a`, `man`, `dpkg -r` stopping the
//! running unit, `dpkg --purge` keeping the store.
//!
//! Each test builds the packages it needs from the test binary into its own
//! temporary directory (a few seconds). Needs root and the packages dpkg-dev,
//! rpm and lintian (scripts/deps); the container test also systemd-container
//! and debootstrap (where they cannot be had, `ONEFS_TEST_ALLOW_SKIP=systemd`
//! lets it skip, saying so).

mod common;

use common::{onefs_bin, repo, require_root, require_systemd_container, scratch_dir};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed ({:?}):\n{}", out.status, text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Cargo.toml's [package] table.
fn package() -> toml::Table {
    let manifest: toml::Table = std::fs::read_to_string(repo("Cargo.toml")).unwrap().parse().unwrap();
    manifest["package"].as_table().unwrap().clone()
}

fn field(name: &str) -> String {
    match &package()[name] {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(a) => a[0].as_str().unwrap().to_string(),
        other => panic!("Cargo.toml {name} = {other:?}"),
    }
}

struct Built {
    _dir: tempfile::TempDir,
    deb: Option<PathBuf>,
    rpm: Option<PathBuf>,
}

/// Runs packaging/build on the test binary; `which` is "", "--deb-only" or "--rpm-only".
fn build(which: &str) -> Built {
    require_root(); // packaging/build may apt-get install tools
    let dir = scratch_dir("onefs-packages.");
    let mut cmd = Command::new(repo("packaging/build"));
    cmd.args(["--bin", onefs_bin(), "--out"]).arg(dir.path());
    if !which.is_empty() {
        cmd.arg(which);
    }
    run(&mut cmd);
    let version = field("version");
    let deb = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"));
    let rpm = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "rpm"));
    if let Some(deb) = &deb {
        let name = deb.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with(&format!("onefs_{version}-1_")), "deb named {name}");
    }
    if let Some(rpm) = &rpm {
        let name = rpm.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with(&format!("onefs-{version}-1.")), "rpm named {name}");
    }
    assert_eq!(deb.is_some(), which != "--rpm-only", "deb built?");
    assert_eq!(rpm.is_some(), which != "--deb-only", "rpm built?");
    Built { _dir: dir, deb, rpm }
}

/// What both packages ship (path -> symlink target or "").
const COMMON: &[(&str, &str)] = &[
    ("/usr/bin/onefs", ""),
    ("/usr/sbin/mount.onefs", "../bin/onefs"),
    ("/usr/sbin/mount.fuse.onefs", "../bin/onefs"),
    ("/usr/lib/systemd/system/onefs@.service", ""),
    ("/usr/lib/systemd/system/onefs.service", ""),
    ("/usr/share/man/man8/onefs.8.gz", ""),
    ("/usr/share/man/man8/mount.onefs.8.gz", ""),
    ("/usr/share/man/man8/mount.fuse.onefs.8.gz", "mount.onefs.8.gz"),
    ("/usr/share/man/man5/onefs.toml.5.gz", ""),
    ("/usr/share/doc/onefs/examples/data.toml", ""),
    ("/etc/onefs", ""),
];
const DEB_ONLY: &[&str] = &[
    "/usr/share/doc/onefs/copyright",
    "/usr/share/doc/onefs/changelog.Debian.gz",
    "/usr/share/doc/onefs/README.md.gz",
    "/usr/share/lintian/overrides/onefs",
];
const RPM_ONLY: &[&str] = &["/usr/share/doc/onefs/README.md", "/usr/share/licenses/onefs/LICENSE"];

/// Non-directory paths of the .deb (plus /etc/onefs), with symlink targets.
fn deb_files(deb: &Path) -> Vec<(String, String)> {
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(deb));
    let mut files = vec![];
    for line in listing.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let path = cols[5].trim_start_matches('.').trim_end_matches('/').to_string();
        let target = if cols.len() >= 8 && cols[6] == "->" { cols[7].to_string() } else { String::new() };
        assert!(cols[1] == "root/root", "{path} is owned by {}", cols[1]);
        if !line.starts_with('d') || path == "/etc/onefs" {
            files.push((path, target));
        }
    }
    files
}

fn scripts_never_restart(name: &str, script: &str) {
    for line in script.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with("echo") {
            continue;
        }
        assert!(!line.contains("restart"), "{name} restarts something: {line}");
        assert!(!line.contains(" start "), "{name} starts something: {line}");
    }
}

#[test]
fn deb_carries_the_files_metadata_and_scripts() {
    let built = build("--deb-only");
    let deb = built.deb.as_ref().unwrap();
    let files = deb_files(deb);
    let paths: BTreeSet<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    let mut want: BTreeSet<&str> = COMMON.iter().map(|(p, _)| *p).collect();
    want.extend(DEB_ONLY);
    assert_eq!(paths, want, "files of the .deb");
    for (path, target) in COMMON {
        let got = &files.iter().find(|(p, _)| p == path).unwrap().1;
        assert_eq!(got, target, "symlink target of {path}");
    }
    assert!(!paths.iter().any(|p| p.starts_with("/etc/onefs/")), "a definition in /etc/onefs would be mounted");

    let control = |f: &str| run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(f)).trim().to_string();
    assert_eq!(control("Package"), "onefs");
    assert_eq!(control("Version"), format!("{}-1", field("version")));
    assert_eq!(control("Maintainer"), field("authors"));
    assert_eq!(control("Architecture"), run(Command::new("dpkg").arg("--print-architecture")).trim());
    let description = control("Description");
    assert!(description.starts_with(&field("description")), "Description: {description}");
    assert!(
        description.contains("disk.img") && description.contains("block files"),
        "Description says what onefs is: {description}"
    );
    let depends: Vec<String> = control("Depends").split(", ").map(String::from).collect();
    assert!(depends.contains(&"fuse3".to_string()), "Depends: {depends:?}");
    assert!(depends.iter().any(|d| d.starts_with("libc6 (>= ")), "Depends: {depends:?}");
    for d in &depends {
        let name = d.split(' ').next().unwrap();
        assert!(["fuse3", "libc6", "libgcc-s1"].contains(&name), "unneeded dependency {d}");
    }

    let dir = scratch_dir("onefs-debctl.");
    run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(dir.path().join("DEBIAN")));
    let script = |s: &str| std::fs::read_to_string(dir.path().join("DEBIAN").join(s)).unwrap();
    let (postinst, prerm, postrm) = (script("postinst"), script("prerm"), script("postrm"));
    assert!(!postinst.contains("@SCRIPTLETS@"));
    for (name, s) in [("postinst", &postinst), ("prerm", &prerm), ("postrm", &postrm)] {
        assert!(s.starts_with("#!/bin/sh\n") && s.contains("set -e"), "{name} header");
        assert!(s.contains("[ -d /run/systemd/system ]"), "{name} checks that systemd runs");
        scripts_never_restart(name, s);
        run(Command::new("sh").arg("-n").arg(dir.path().join("DEBIAN").join(name)));
    }
    assert!(postinst.contains("onefs_daemon_reload") && postinst.contains("onefs_tell_running"), "postinst");
    assert!(postrm.contains("onefs_daemon_reload") && postrm.contains("remove|purge"), "postrm");
    assert!(prerm.contains("if [ \"$1\" = remove ]; then\n    onefs_stop_all"), "prerm stops units on removal only");
    assert!(
        prerm.contains("deb-systemd-invoke") && prerm.contains("'onefs@*.service'"),
        "prerm stops onefs@* instances"
    );
    assert!(postinst.contains("daemon-reload"), "postinst reloads systemd");
}

#[test]
fn deb_is_lintian_clean() {
    let built = build("--deb-only");
    let out = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--no-tag-display-limit"])
        .arg(built.deb.as_ref().unwrap())
        .output()
        .expect("lintian missing: apt-get install lintian (scripts/deps)");
    let said = text(&out);
    let tags: Vec<&str> = said.lines().filter(|l| l.starts_with("E:") || l.starts_with("W:")).collect();
    assert!(out.status.success() && tags.is_empty(), "lintian:\n{said}");
}

#[test]
fn rpm_carries_the_same_files_and_scriptlets() {
    let built = build("");
    let rpm = built.rpm.as_ref().unwrap();
    let q = |args: &[&str]| run(Command::new("rpm").args(args).arg(rpm));
    let listed: BTreeSet<String> = q(&["-qpl"]).lines().map(String::from).collect();
    // the .deb's files, less the Debian-only ones, plus the RPM-only ones
    let deb: BTreeSet<String> = deb_files(built.deb.as_ref().unwrap()).into_iter().map(|(p, _)| p).collect();
    let mut want: BTreeSet<String> = deb.into_iter().filter(|p| !DEB_ONLY.contains(&p.as_str())).collect();
    want.extend(RPM_ONLY.iter().map(|p| p.to_string()));
    for dir in ["/usr/share/doc/onefs", "/usr/share/doc/onefs/examples", "/usr/share/licenses/onefs"] {
        want.insert(dir.to_string());
    }
    assert_eq!(listed, want, "files of the .rpm");
    // symlinks and modes as in the .deb
    let dump = q(&["-qp", "--dump"]);
    for (path, target) in COMMON {
        let line = dump
            .lines()
            .find(|l| l.split(' ').next() == Some(path))
            .unwrap_or_else(|| panic!("{path} not in the dump"));
        let cols: Vec<&str> = line.split(' ').collect();
        assert_eq!(cols[5], "root", "{path} owner");
        assert_eq!(cols[10], if target.is_empty() { "X" } else { target }, "symlink target of {path}");
    }
    assert!(dump.lines().any(|l| l.starts_with("/usr/bin/onefs ") && l.contains(" 0100755 ")), "onefs mode");

    assert_eq!(
        q(&["-qp", "--qf", "%{NAME} %{VERSION} %{RELEASE} %{LICENSE}\\n"]).trim(),
        format!("onefs {} 1 {}", field("version"), field("license"))
    );
    assert_eq!(q(&["-qp", "--qf", "%{SUMMARY}\\n"]).trim(), field("description"));
    let requires = q(&["-qp", "--requires"]);
    assert!(requires.lines().any(|l| l.trim() == "fuse3"), "Requires: {requires}");
    for r in requires.lines().map(str::trim) {
        assert!(
            r == "fuse3"
                || r == "/bin/sh"
                || r.starts_with("rpmlib(")
                || r.starts_with("rtld(")
                || r.starts_with("libc.so.6")
                || r.starts_with("libgcc_s.so.1")
                || r.starts_with("ld-linux"),
            "unneeded requirement {r}"
        );
    }

    let scripts = q(&["-qp", "--scripts"]);
    let mut sections: Vec<(String, String)> = vec![];
    for line in scripts.lines() {
        if line.contains(" scriptlet (using ") && line.ends_with("):") {
            sections.push((line.split(' ').next().unwrap().to_string(), String::new()));
        } else if let Some((_, body)) = sections.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    let section = |name: &str| {
        sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| panic!("no {name} scriptlet:\n{scripts}"))
    };
    let (post, preun, postun) = (section("postinstall"), section("preuninstall"), section("postuninstall"));
    assert!(
        post.contains("onefs_daemon_reload\n") && post.contains("if [ \"$1\" -ge 2 ]; then\n    onefs_tell_running"),
        "%post:\n{post}"
    );
    assert!(preun.contains("if [ \"$1\" -eq 0 ]; then\n    onefs_stop_all"), "%preun:\n{preun}");
    assert!(postun.contains("onefs_daemon_reload\n"), "%postun:\n{postun}");
    for (name, s) in [("%post", &post), ("%preun", &preun), ("%postun", &postun)] {
        assert!(
            s.contains("systemctl --system daemon-reload") && s.contains("stop $units"),
            "{name} lacks the shared functions"
        );
        scripts_never_restart(name, s);
    }
}

#[test]
fn rpm_installs_into_a_root_and_erases() {
    let built = build("--rpm-only");
    let root = scratch_dir("onefs-rpmroot.");
    // a /bin/sh in the root, so the scriptlets really run (chrooted, no systemd there)
    let ldd = run(Command::new("ldd").arg("/bin/sh"));
    let mut copy = vec![PathBuf::from("/bin/sh")];
    copy.extend(ldd.split_whitespace().filter(|w| w.starts_with('/')).map(PathBuf::from));
    for file in copy {
        let real = std::fs::canonicalize(&file).unwrap();
        let to = root.path().join(file.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&real, &to).unwrap();
    }
    let out = Command::new("rpm")
        .arg("-i")
        .arg("--root")
        .arg(root.path())
        .arg("--nodeps")
        .arg(built.rpm.as_ref().unwrap())
        .output()
        .unwrap();
    let said = text(&out);
    assert!(out.status.success() && !said.contains("scriptlet failed") && !said.contains("error:"), "rpm -i:\n{said}");
    for (path, _) in COMMON {
        let p = root.path().join(&path[1..]);
        assert!(p.symlink_metadata().is_ok(), "{path} not installed");
    }
    assert_eq!(std::fs::read_link(root.path().join("usr/sbin/mount.fuse.onefs")).unwrap(), Path::new("../bin/onefs"));
    let installed = root.path().join("usr/bin/onefs");
    let help = run(Command::new(&installed).arg("--help"));
    assert!(help.contains("mount"), "installed onefs --help: {help}");
    assert!(run(Command::new("rpm").arg("--root").arg(root.path()).args(["-q", "onefs"])).starts_with("onefs-"));

    let out =
        Command::new("rpm").arg("-e").arg("--root").arg(root.path()).arg("--nodeps").arg("onefs").output().unwrap();
    let said = text(&out);
    assert!(out.status.success() && !said.contains("scriptlet failed") && !said.contains("error:"), "rpm -e:\n{said}");
    for (path, _) in COMMON {
        assert!(root.path().join(&path[1..]).symlink_metadata().is_err(), "{path} left after rpm -e");
    }
}

#[test]
fn deb_installs_and_serves_under_a_real_systemd() {
    if !require_systemd_container() {
        return;
    }
    let built = build("--deb-only");
    let out = Command::new(repo("packaging/test/deb-in-box.sh")).arg(built.deb.as_ref().unwrap()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ALL DEB PACKAGE TESTS PASSED"),
        "packaging/test/deb-in-box.sh failed ({:?})\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{stdout}");
}
