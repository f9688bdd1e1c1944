//! onefs as a service: `onefs run NAME` (one definition, what
//! `onefs@NAME.service` runs) and `onefs daemon` (every definition in a
//! directory, what `onefs.service` runs).
//!
//! Both speak sd_notify: `READY=1` once every mount is live, `STATUS=`,
//! `WATCHDOG=1` while `WATCHDOG_USEC` is set and the mounts answer,
//! `RELOADING=1`…`READY=1` around a SIGHUP reload, `STOPPING=1` on
//! SIGTERM/SIGINT. A reload's outcome is also written to a small runtime file
//! so `onefs reload` (the units' `ExecReload=`) can wait for it and report it.

use crate::config::{self, Definition};
use crate::mount::{Mounted, Unmount};
use anyhow::{Context, bail};
use log::LevelFilter;
use sd_notify::NotifyState;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Where the definitions come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// One definition file (`onefs run NAME` or `--config FILE`).
    File { file: PathBuf, name: Option<String> },
    /// Every `*.toml` in a directory (`onefs daemon`).
    Dir(PathBuf),
}

enum Event {
    Signal(i32),
    Ended(u64),
}

struct Active {
    id: u64,
    def: Definition,
    mounted: Mounted,
}

fn notify(states: &[NotifyState]) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Err(err) = sd_notify::notify(states)
        && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        let socket = std::env::var("NOTIFY_SOCKET").unwrap_or_default();
        log::warn!("sd_notify to {socket} failed: {err} (further failures are not logged)");
    }
}

/// The file where a service records the outcome of its reloads, for
/// `onefs reload` to wait on: `reload-PID` in onefs's runtime directory
/// (`/run/onefs`, or a per-user directory under the temporary directory when
/// /run is not writable), beside the control socket `onefs grow` uses.
pub fn reload_file(pid: u32) -> PathBuf {
    crate::mount::control::runtime_dir().join(format!("reload-{pid}"))
}

/// Reads `GENERATION OK|FAIL MESSAGE` from a reload file.
fn read_reload(file: &Path) -> Option<(u64, bool, String)> {
    let text = std::fs::read_to_string(file).ok()?;
    let mut parts = text.trim_end().splitn(3, ' ');
    let generation = parts.next()?.parse().ok()?;
    let ok = parts.next()? == "OK";
    Some((generation, ok, parts.next().unwrap_or("").to_string()))
}

/// `onefs reload`: SIGHUP to the service and wait for its verdict.
pub fn request_reload(pid: u32, timeout: Duration) -> anyhow::Result<String> {
    let file = reload_file(pid);
    let before = read_reload(&file).map(|(g, _, _)| g).unwrap_or(0);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGHUP)
        .with_context(|| format!("cannot signal onefs pid {pid}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((generation, ok, message)) = read_reload(&file)
            && generation > before
        {
            return if ok { Ok(message) } else { Err(anyhow::anyhow!("{message}")) };
        }
        if Instant::now() > deadline {
            bail!("onefs pid {pid} did not report a finished reload within {}s", timeout.as_secs());
        }
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err() {
            bail!("onefs pid {pid} exited during the reload");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The process serving `name` (from its store's lock), for `onefs reload NAME`.
pub fn pid_serving(dir: &Path, name: &str) -> anyhow::Result<u32> {
    let def = Definition::load_named(dir, name)?;
    let store = def.store.clone();
    let holder = crate::probe::ask(("holder", def.store.clone()), crate::probe::MOUNT_LIMIT, move || {
        crate::store_lock::holder(&store)
    })
    .map_err(|why| anyhow::anyhow!("{name}: store {}: {why}", def.store.display()))?
    .ok_or_else(|| anyhow::anyhow!("{name}: store {} is not mounted by a running onefs", def.store.display()))?;
    holder.pid.ok_or_else(|| anyhow::anyhow!("{name}: the lock of {} names no pid", def.store.display()))
}

/// `onefs cleanup`: clears dead mounts (ENOTCONN after a crash) at the
/// definitions' mountpoints. Live mounts are left alone; one that does not
/// answer is reported, and the others are still seen to.
pub fn cleanup(defs: &[Definition]) -> anyhow::Result<()> {
    let mut failed = vec![];
    for def in defs {
        match crate::mount::clear_dead_mount(&def.mountpoint) {
            Ok(true) => {
                log::warn!("{}: cleared a dead mount at {} left by a crashed onefs", def.name, def.mountpoint.display())
            }
            Ok(false) => {}
            Err(err) => {
                log::error!("{}: {err:#}", def.name);
                failed.push(def.name.as_str());
            }
        }
    }
    if !failed.is_empty() {
        bail!("cleanup failed for {}", failed.join(", "));
    }
    Ok(())
}

struct Service {
    source: Source,
    active: BTreeMap<String, Active>,
    /// Unmounted or lazily detached, waiting for their sessions to end.
    draining: Vec<Active>,
    /// Definitions that are broken or failed to mount (daemon mode), by name.
    failed: BTreeMap<String, String>,
    tx: mpsc::Sender<Event>,
    next_id: u64,
    reload_generation: u64,
    reload_file: PathBuf,
    /// The level given on the command line, if any (it beats log_level keys).
    cli_level: Option<LevelFilter>,
}

impl Service {
    fn single(&self) -> bool {
        matches!(self.source, Source::File { .. })
    }

    /// Loads the definitions: the good ones and one line per broken one.
    fn load(&self) -> anyhow::Result<config::Loaded> {
        match &self.source {
            Source::File { file, name } => {
                let def = Definition::load(file, name.as_deref())?;
                Ok((vec![def], vec![]))
            }
            Source::Dir(dir) => Ok(config::load_dir(dir)?),
        }
    }

    fn apply_level(&self, defs: &[Definition]) {
        let level =
            self.cli_level.or_else(|| defs.iter().filter_map(|d| d.log_level).max()).unwrap_or(LevelFilter::Info);
        if level != crate::logging::level() {
            log::info!("log level {level}");
            crate::logging::set_level(level);
        }
    }

    fn start(&mut self, def: Definition) -> anyhow::Result<()> {
        crate::create::create_if_empty(&def).with_context(|| format!("{}: cannot create the image", def.name))?;
        let id = self.next_id;
        self.next_id += 1;
        let tx = self.tx.clone();
        let mounted = Mounted::start(&def.spec(), Box::new(move || drop(tx.send(Event::Ended(id)))))
            .with_context(|| def.name.clone())?;
        self.failed.remove(&def.name);
        self.active.insert(def.name.clone(), Active { id, def, mounted });
        Ok(())
    }

    fn stop_one(&mut self, name: &str) {
        if let Some(mut active) = self.active.remove(name) {
            match active.mounted.unmount() {
                Unmount::Done | Unmount::Detached | Unmount::AlreadyDetached => {}
                Unmount::Failed(message) => log::error!("{name}: {message}"),
            }
            self.draining.push(active);
        }
    }

    fn status(&self) -> String {
        let mounts: Vec<String> = self
            .active
            .values()
            .map(|a| format!("{} at {}", a.mounted.store.display(), a.mounted.mountpoint.display()))
            .collect();
        let mut text = if self.single() {
            match mounts.first() {
                Some(m) => format!("serving {m}"),
                None => "not mounted".into(),
            }
        } else {
            format!("serving {} mount{}", mounts.len(), if mounts.len() == 1 { "" } else { "s" })
                + &if mounts.is_empty() { String::new() } else { format!(": {}", mounts.join(", ")) }
        };
        if !self.failed.is_empty() {
            let names: Vec<&str> = self.failed.keys().map(String::as_str).collect();
            text += &format!("; failed: {}", names.join(", "));
        }
        let detached = self.draining.iter().filter(|a| a.mounted.is_detached()).count();
        if detached > 0 {
            text += &format!("; {detached} detached, serving until released");
        }
        text
    }

    /// Brings the mounts in line with the definitions. Returns the problems
    /// found (empty when everything applied).
    fn sync_definitions(&mut self) -> Vec<String> {
        let mut problems = vec![];
        let (defs, broken) = match self.load() {
            Ok(loaded) => loaded,
            Err(err) => return vec![crate::errors::one_line(&err)],
        };
        self.apply_level(&defs);
        for (name, err) in broken {
            log::error!("{err}; skipped");
            if !self.active.contains_key(&name) {
                self.failed.insert(name, err.0.clone());
            }
            problems.push(err.0);
        }
        // Removed definitions are unmounted; a definition that became broken
        // keeps its running mount.
        if let Source::Dir(dir) = self.source.clone() {
            let removed: Vec<String> = self
                .active
                .keys()
                .filter(|name| !defs.iter().any(|d| &&d.name == name))
                .filter(|name| !dir.join(format!("{name}.{}", config::EXTENSION)).exists())
                .cloned()
                .collect();
            for name in removed {
                log::info!("{name}: definition removed; unmounting");
                self.stop_one(&name);
            }
            self.failed.retain(|name, _| dir.join(format!("{name}.{}", config::EXTENSION)).exists());
        }
        for def in defs {
            if let Some(active) = self.active.get(&def.name) {
                let changes = def.remount_changes(&active.def);
                if !changes.is_empty() {
                    let message = format!(
                        "{}: {} changed; this needs a remount, not applied (restart {} to apply)",
                        def.name,
                        changes.join(", "),
                        if self.single() { format!("onefs@{}.service", def.name) } else { "onefs.service".into() }
                    );
                    log::warn!("{message}");
                    problems.push(message);
                } else if let Some(active) = self.active.get_mut(&def.name) {
                    active.def = def;
                }
                continue;
            }
            if let Some(conflict) =
                self.active.values().find(|a| a.def.store == def.store || a.def.mountpoint == def.mountpoint)
            {
                let message =
                    format!("{}: same store or mountpoint as the running {}; skipped", def.name, conflict.def.name);
                log::error!("{message}");
                self.failed.insert(def.name.clone(), message.clone());
                problems.push(message);
                continue;
            }
            let name = def.name.clone();
            if let Err(err) = self.start(def) {
                let message = crate::errors::one_line(&err);
                log::error!("{message}");
                self.failed.insert(name, message.clone());
                problems.push(message);
            }
        }
        problems
    }

    fn record_reload(&mut self, ok: bool, message: &str) {
        self.reload_generation += 1;
        let line =
            format!("{} {} {}\n", self.reload_generation, if ok { "OK" } else { "FAIL" }, message.replace('\n', " "));
        if let Err(err) = std::fs::write(&self.reload_file, line) {
            log::warn!("{}: {err}", self.reload_file.display());
        }
    }

    fn reload(&mut self) {
        log::info!("SIGHUP: reloading");
        notify(&[NotifyState::Reloading]);
        let problems = self.sync_definitions();
        let status = self.status();
        let (ok, message) = if problems.is_empty() {
            (true, format!("reloaded: {status}"))
        } else {
            (false, format!("reload: {}", problems.join("; ")))
        };
        log::info!("{message}");
        notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
        self.record_reload(ok, &message);
    }

    fn ended(&mut self, id: u64) -> Option<anyhow::Result<()>> {
        if let Some(i) = self.draining.iter().position(|a| a.id == id) {
            let active = self.draining.remove(i);
            let name = active.def.name.clone();
            let result = active.mounted.finish();
            if let Err(err) = &result {
                log::error!("{name}: {}", crate::errors::one_line(err));
            }
            return Some(result);
        }
        let name = self.active.iter().find(|(_, a)| a.id == id).map(|(n, _)| n.clone())?;
        let active = self.active.remove(&name)?;
        // A plain umount is the normal way to stop a single definition's
        // service: finish() says "unmounted" once, at info. Serving several,
        // the others go on and this one waits for a reload: say so, calmly.
        if self.single() {
            log::debug!("{name}: {} was unmounted from outside onefs", active.mounted.mountpoint.display());
        } else {
            log::info!(
                "{name}: {} was unmounted from outside onefs; `onefs reload` mounts it again",
                active.mounted.mountpoint.display()
            );
        }
        let result = active.mounted.finish();
        if !self.single() {
            self.failed.insert(name.clone(), "unmounted from outside; reload to mount it again".into());
        }
        Some(result)
    }

    /// Whether every mount answers statfs by `deadline`. The mounts are
    /// asked at once; a stuck one is asked by one thread however often this
    /// runs.
    fn all_live(&self, deadline: Instant) -> bool {
        for active in self.active.values() {
            active.mounted.ask_if_live();
        }
        self.active.values().all(|a| a.mounted.is_live(deadline))
    }
}

/// Serves a definition or a directory of them until SIGTERM/SIGINT (or, for
/// one definition, until it is unmounted from outside).
pub fn serve(source: Source, cli_level: Option<LevelFilter>) -> anyhow::Result<()> {
    // Before mounting: a SIGTERM right after the mount is live must unmount cleanly.
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
        .context("cannot install signal handlers")?;
    let handle = signals.handle();
    let (tx, rx) = mpsc::channel();
    let signal_tx = tx.clone();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for signal in signals.forever() {
            if signal_tx.send(Event::Signal(signal)).is_err() {
                break;
            }
        }
    })?;
    let reload_file = reload_file(std::process::id());
    let _ = std::fs::remove_file(&reload_file);
    let mut service = Service {
        source,
        active: BTreeMap::new(),
        draining: vec![],
        failed: BTreeMap::new(),
        tx,
        next_id: 0,
        reload_generation: 0,
        reload_file,
        cli_level,
    };
    let result = serve_loop(&mut service, &rx);
    handle.close();
    let _ = std::fs::remove_file(&service.reload_file);
    crate::mount::control::close();
    result
}

fn serve_loop(service: &mut Service, rx: &mpsc::Receiver<Event>) -> anyhow::Result<()> {
    if service.single() {
        // One definition: failing to load or mount it fails the service.
        let (defs, _) = service.load()?;
        service.apply_level(&defs);
        for def in defs {
            service.start(def)?;
        }
    } else {
        if let Source::Dir(dir) = &service.source
            && !dir.is_dir()
        {
            bail!("config directory {} does not exist", dir.display());
        }
        service.sync_definitions();
    }
    let status = service.status();
    log::info!("ready: {status}");
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);

    let watchdog = sd_notify::watchdog_enabled();
    let tick = watchdog.map(|w| w / 2).unwrap_or(Duration::from_secs(3600));
    let mut stopping = false;
    let mut failure: Option<anyhow::Error> = None;
    let mut last_ping = Instant::now();
    loop {
        if stopping && service.draining.is_empty() && service.active.is_empty() {
            break;
        }
        if !stopping && service.single() && service.active.is_empty() && service.draining.is_empty() {
            break;
        }
        let event = rx.recv_timeout(tick.saturating_sub(last_ping.elapsed()).max(Duration::from_millis(10)));
        if watchdog.is_some() && last_ping.elapsed() >= tick {
            // Never wait long: the loop also serves signals and reloads.
            let deadline = Instant::now() + crate::probe::LIMIT.min(tick / 2);
            if service.all_live(deadline) {
                notify(&[NotifyState::Watchdog]);
            } else {
                log::warn!("a mount does not answer statfs; holding back the watchdog ping");
            }
            last_ping = Instant::now();
        }
        match event {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Ok(Event::Signal(libc::SIGHUP)) if stopping => log::info!("SIGHUP ignored while stopping"),
            Ok(Event::Signal(libc::SIGHUP)) => service.reload(),
            Ok(Event::Signal(signal)) => {
                if !stopping {
                    log::info!("signal {signal}: stopping");
                    notify(&[NotifyState::Stopping, NotifyState::Status("stopping: flushing and unmounting")]);
                    stopping = true;
                    let names: Vec<String> = service.active.keys().cloned().collect();
                    for name in names {
                        service.stop_one(&name);
                    }
                }
                if service.draining.iter().any(|a| a.mounted.is_detached()) {
                    let status = service.status();
                    log::warn!("signal {signal}: {status}");
                    notify(&[NotifyState::Status(&status)]);
                }
            }
            Ok(Event::Ended(id)) => {
                if let Some(Err(err)) = service.ended(id) {
                    failure.get_or_insert(err);
                }
                if !stopping {
                    notify(&[NotifyState::Status(&service.status())]);
                }
            }
        }
    }
    match failure {
        Some(err) => Err(err),
        None => Ok(()),
    }
}
