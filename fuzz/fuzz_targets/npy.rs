//! `.npy` files: the whole-array reader and the random-access sample source.
//!
//! Whatever reads must be consistent with its header, write back as an `.npy` that reads the same, and agree
//! between the two readers.

#![no_main]

use std::io::Cursor;

use daig_shared::data::{SampleSource, npy};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let limits = common::limits();
    let whole = npy::read(Cursor::new(data), &limits);
    if let Ok(array) = &whole {
        common::check_raw(array, &limits);
        let mut written = Vec::new();
        npy::write_raw(&mut written, &array.info, &array.data).expect("an array that was read writes");
        let again = npy::read(Cursor::new(&written), &limits).expect("a written .npy reads");
        assert_eq!(&again, array);
    }
    if let Ok(mut source) = SampleSource::npy(Cursor::new(data), &limits) {
        common::check_info(source.info(), &limits);
        let expected = whole.as_ref().ok().map(|array| {
            assert_eq!(&array.info, source.info(), "the two readers disagree on the header");
            common::to_le(&array.info, &array.data)
        });
        common::check_source(&mut source, expected.as_deref());
    } else {
        // The sample source checks the same header and the same exact length as the whole-array reader.
        assert!(whole.is_err(), "SampleSource::npy refused what npy::read accepted");
    }
});
