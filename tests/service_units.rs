//! The systemd units pass `systemd-analyze verify` silently, the man pages
//! are lint-clean, and every command-line option is documented.

mod common;

use clap::CommandFactory;
use common::{onefs_bin, repo, require_program};
use std::process::Command;

#[test]
fn units_verify_without_a_word() {
    require_program("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    // systemd-analyze resolves ExecStart= on this host: point it at the built binary.
    for unit in ["onefs@.service", "onefs.service"] {
        let text = std::fs::read_to_string(repo(&format!("systemd/{unit}"))).unwrap();
        std::fs::write(dir.path().join(unit), text.replace("/usr/bin/onefs", onefs_bin())).unwrap();
    }
    // Documentation= is checked against our own man pages.
    let man = dir.path().join("man");
    for (page, section) in [("onefs.8", "man8"), ("onefs.toml.5", "man5"), ("mount.onefs.8", "man8")] {
        std::fs::create_dir_all(man.join(section)).unwrap();
        std::fs::copy(repo(&format!("man/{page}")), man.join(section).join(page)).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("onefs@data.service"))
        .arg(dir.path().join("onefs.service"))
        .env("MANPATH", &man)
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify said:\n{said}");
}

#[test]
fn units_keep_the_host_mount_namespace_and_need_no_bin_kill() {
    for unit in ["onefs@.service", "onefs.service"] {
        let text = std::fs::read_to_string(repo(&format!("systemd/{unit}"))).unwrap();
        let settings: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        for forbidden in [
            "PrivateTmp",
            "ProtectSystem",
            "ProtectHome",
            "PrivateDevices",
            "PrivateMounts",
            "ReadOnlyPaths",
            "ReadWritePaths",
            "InaccessiblePaths",
            "TemporaryFileSystem",
            "BindPaths",
            "ProtectKernelTunables",
            "ProtectKernelModules",
            "ProtectKernelLogs",
            "ProtectControlGroups",
            "ProtectProc",
            "MountFlags",
            "RootDirectory",
            "/bin/kill",
        ] {
            assert!(!settings.iter().any(|l| l.contains(forbidden)), "{unit} uses {forbidden}");
        }
        for needed in [
            "Type=notify",
            "KillMode=mixed",
            "Restart=on-failure",
            "DeviceAllow=/dev/fuse",
            "@mount",
            "After=network-online.target",
        ] {
            assert!(settings.iter().any(|l| l.contains(needed)), "{unit} lacks {needed}");
        }
    }
}

#[test]
fn man_pages_are_lint_clean() {
    require_program("groff", "groff");
    for page in ["onefs.8", "mount.onefs.8", "onefs.toml.5"] {
        let out = Command::new("groff").args(["-man", "-ww", "-z"]).arg(repo(&format!("man/{page}"))).output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.is_empty(), "groff on {page}:\n{said}");
    }
}

fn collect(cmd: &clap::Command, out: &mut Vec<(String, String)>) {
    for arg in cmd.get_arguments() {
        if arg.is_hide_set() || arg.is_positional() {
            continue;
        }
        if let Some(long) = arg.get_long() {
            out.push((cmd.get_name().to_string(), format!("\\-\\-{}", long.replace('-', "\\-"))));
        }
        if let Some(short) = arg.get_short() {
            out.push((cmd.get_name().to_string(), format!("\\-{short}")));
        }
    }
    for sub in cmd.get_subcommands() {
        out.push((cmd.get_name().to_string(), sub.get_name().to_string()));
        collect(sub, out);
    }
}

#[test]
fn every_cli_option_and_command_is_in_the_man_page() {
    let page = std::fs::read_to_string(repo("man/onefs.8")).unwrap();
    let mut cli = onefs::cli::Cli::command();
    cli.build();
    let mut options = vec![];
    collect(&cli, &mut options);
    assert!(options.len() > 10, "{options:?}");
    let missing: Vec<_> = options.iter().filter(|(_, o)| o != "help" && !page.contains(o.as_str())).collect();
    assert!(missing.is_empty(), "not in man/onefs.8: {missing:?}");
    // The toml keys are all in onefs.toml(5).
    let page5 = std::fs::read_to_string(repo("man/onefs.toml.5")).unwrap();
    for key in [
        "store",
        "mountpoint",
        "read_only",
        "allow_other",
        "uid",
        "gid",
        "mode",
        "threads",
        "io_uring",
        "log_level",
        "[create]",
        "size",
        "block_size",
    ] {
        let documented = page5.lines().any(|l| l.starts_with(".B") && l.split([' ', '"']).any(|word| word == key));
        assert!(documented, "{key} not documented in onefs.toml.5");
    }
    // The mount helper's flags are in mount.onefs(8).
    let page8 = std::fs::read_to_string(repo("man/mount.onefs.8")).unwrap();
    // Every mount option onefs accepts is in both man pages, the README and --help.
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let help = onefs::cli::Cli::command().find_subcommand_mut("mount").unwrap().render_long_help().to_string();
    for option in ["ro", "allow_other", "uid=", "gid=", "mode=", "threads=", "io_uring=", "nonempty"] {
        let probe = if option.ends_with('=') { format!("{option}1") } else { option.to_string() };
        if let Err(e) = onefs::options::MountOptions::parse(&probe) {
            assert!(!e.starts_with("unknown mount option"), "{e}");
        }
        assert!(page.contains(option) && page8.contains(option), "{option} missing from a man page");
        assert!(readme.contains(&format!("`{option}")), "{option} missing from README.md");
        assert!(help.contains(option), "{option} missing from onefs mount --help");
    }
    for flag in ["\\-s", "\\-f", "\\-n", "\\-v", "\\-o"] {
        assert!(
            page8.contains(&format!(".B {flag}")) || page8.contains(&format!(".BI {flag}")),
            "{flag} not in mount.onefs.8"
        );
    }
}
