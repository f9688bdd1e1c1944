//! Kill points for the crash tests: with `ONEFS_TEST_KILL_AT=STEP` in its
//! environment, onefs kills itself with SIGKILL on reaching STEP, exactly
//! as a `kill -9` at that moment would. Without it (always, outside the
//! tests) a kill point does nothing.

pub const VAR: &str = "ONEFS_TEST_KILL_AT";

/// Dies here if the environment asks for it.
pub fn reached(step: &str) {
    if std::env::var_os(VAR).is_some_and(|v| v == step) {
        log::warn!("{VAR}={step}: killing this onefs as kill -9 would");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
