//! Fuzzes the mount definition parser (`/etc/onefs/NAME.toml`): any text
//! must give `Ok` or one error line naming the file, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onefs::config::Definition;
use std::path::Path;

fuzz_target!(|text: &str| {
    let file = Path::new("data.toml");
    match Definition::parse(text, file, "data") {
        Ok(def) => {
            assert!(!def.store.as_os_str().is_empty() && !def.mountpoint.as_os_str().is_empty());
            if let Some(create) = def.create {
                onefs::core::Geometry::new(create.size, create.block_size).expect("accepted [create] is a valid geometry");
            }
        }
        Err(err) => {
            let msg = err.to_string();
            assert!(msg.starts_with("data.toml"), "{msg}");
            assert!(!msg.contains('\n'), "error is more than one line: {msg:?}");
        }
    }
});
