//! Where log lines go: the journal (stderr with `<N>` priority prefixes, when
//! systemd connected stderr to it), the local syslog socket (when detached),
//! or readable lines on a terminal. Never a network syslog.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The level in force; [`set_level`] changes it at run time (a reload).
static LEVEL: AtomicUsize = AtomicUsize::new(LevelFilter::Info as usize);

fn level_from(n: usize) -> LevelFilter {
    [LevelFilter::Off, LevelFilter::Error, LevelFilter::Warn, LevelFilter::Info, LevelFilter::Debug, LevelFilter::Trace]
        .get(n)
        .copied()
        .unwrap_or(LevelFilter::Info)
}

/// Changes the level of the installed logger.
pub fn set_level(level: LevelFilter) {
    LEVEL.store(level as usize, Ordering::Relaxed);
    log::set_max_level(level);
}

pub fn level() -> LevelFilter {
    level_from(LEVEL.load(Ordering::Relaxed))
}

type SyslogLogger = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

enum Sink {
    Terminal,
    Journal,
    Syslog(Mutex<SyslogLogger>),
}

struct Logger {
    sink: Sink,
}

/// How the process runs, which decides where its log goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Attached to a terminal or a service manager: stderr (journal-aware).
    Stderr,
    /// Detached from everything: the local syslog socket.
    Syslog,
}

/// Installs the logger once; later calls are ignored.
pub fn init(target: Target, level: LevelFilter) {
    let sink = match target {
        Target::Stderr if std::env::var_os("JOURNAL_STREAM").is_some() => Sink::Journal,
        Target::Stderr => Sink::Terminal,
        Target::Syslog => {
            let formatter = syslog::Formatter3164 {
                facility: syslog::Facility::LOG_DAEMON,
                hostname: None,
                process: "onefs".into(),
                pid: std::process::id(),
            };
            // Only the local socket: a detached daemon has nowhere else to go.
            match syslog::unix(formatter) {
                Ok(logger) => Sink::Syslog(Mutex::new(logger)),
                Err(_) => Sink::Terminal,
            }
        }
    };
    if log::set_boxed_logger(Box::new(Logger { sink })).is_ok() {
        set_level(level);
    }
}

pub fn parse_level(text: &str) -> Option<LevelFilter> {
    match text {
        "error" => Some(LevelFilter::Error),
        "warn" | "warning" => Some(LevelFilter::Warn),
        "info" => Some(LevelFilter::Info),
        "debug" => Some(LevelFilter::Debug),
        "trace" => Some(LevelFilter::Trace),
        _ => None,
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        // Other crates (fuser) log at info for routine events; keep only their warnings.
        metadata.level() <= level() && (metadata.target().starts_with("onefs") || metadata.level() <= Level::Warn)
    }

    fn log(&self, record: &Record) {
        // fuser warns "Unmount failed" when it finds the mount already gone:
        // onefs unmounted it itself (and reports its own failures).
        if record.target().starts_with("fuser")
            && record.args().to_string().starts_with("Unmount failed")
            && level() < LevelFilter::Debug
        {
            return;
        }
        self.write(record)
    }

    fn flush(&self) {}
}

impl Logger {
    fn write(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args();
        match &self.sink {
            Sink::Terminal => {
                let level = match record.level() {
                    Level::Error => "error: ",
                    Level::Warn => "warning: ",
                    _ => "",
                };
                let _ = writeln!(std::io::stderr().lock(), "onefs: {level}{message}");
            }
            Sink::Journal => {
                let priority = match record.level() {
                    Level::Error => 3,
                    Level::Warn => 4,
                    Level::Info => 6,
                    Level::Debug | Level::Trace => 7,
                };
                let _ = writeln!(std::io::stderr().lock(), "<{priority}>{message}");
            }
            Sink::Syslog(logger) => {
                let mut logger = crate::sync::lock(logger);
                let text = message.to_string();
                let _ = match record.level() {
                    Level::Error => logger.err(text),
                    Level::Warn => logger.warning(text),
                    Level::Info => logger.info(text),
                    Level::Debug | Level::Trace => logger.debug(text),
                };
            }
        }
    }
}
