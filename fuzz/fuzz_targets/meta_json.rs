//! Fuzzes the `onefs.json` parser: any text must give `Ok` or an error that
//! names the file, never a panic; an accepted description must describe a
//! valid geometry and survive a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onefs::meta::Meta;
use std::path::Path;

fuzz_target!(|text: &str| {
    let path = Path::new("onefs.json");
    match Meta::parse(text, path) {
        Ok(meta) => {
            let geometry = meta.geometry().expect("accepted description has a valid geometry");
            assert_eq!(geometry.block_count(), meta.block_count);
            let again = Meta::parse(&meta.to_json(), path).expect("round trip");
            assert_eq!(again, meta);
        }
        Err(err) => assert!(err.to_string().starts_with("onefs.json: "), "{err}"),
    }
});
