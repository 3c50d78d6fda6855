//! `.npz` archives: the directory, every entry's header, the whole-array read, the spool to raw samples and
//! the in-place sample source of a stored entry.
//!
//! The three ways of reading an entry must agree on its header and its bytes.

#![no_main]

use std::io::Cursor;

use daig_shared::data::npz::{FEATURE_NAMES, LABEL_NAMES, NpzArchive};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

/// Entries looked at per input: enough for features and labels, few enough to keep runs fast.
const MAX_ENTRIES: usize = 4;

fuzz_target!(|data: &[u8]| {
    let limits = common::limits();
    let Ok(mut archive) = NpzArchive::new(Cursor::new(data), &limits) else { return };
    let names = archive.names();
    let _ = archive.find(&FEATURE_NAMES);
    let _ = archive.find(&LABEL_NAMES);
    let mut stored = None;
    for name in names.iter().take(MAX_ENTRIES) {
        let Ok(entry) = archive.entry(name) else {
            assert!(archive.read_array(name).is_err(), "read_array accepted an entry whose header is refused");
            continue;
        };
        common::check_info(&entry.info, &limits);
        let whole = archive.read_array(name);
        if let Ok(array) = &whole {
            common::check_raw(array, &limits);
            assert_eq!(array.info, entry.info, "read_array and entry disagree on '{name}'");
        }
        let mut spooled = Vec::new();
        match archive.spool(name, &mut spooled) {
            Ok(info) => {
                assert_eq!(spooled.len() as u64, info.byte_len().expect("a spooled shape has a length"));
                assert_eq!(info.shape, entry.info.shape);
                assert_eq!(info.dtype, entry.info.dtype);
                if let Ok(array) = &whole {
                    assert_eq!(spooled, common::to_le(&array.info, &array.data), "spool and read_array differ");
                }
                if entry.stored && stored.is_none() {
                    stored = Some((name.clone(), spooled));
                }
            }
            Err(_) => assert!(whole.is_err(), "spool refused '{name}', which read_array read"),
        }
    }
    if let Some((name, spooled)) = stored {
        let mut source = archive.into_sample_source(&name).expect("a stored entry that spools opens in place");
        common::check_source(&mut source, Some(&spooled));
    }
});
