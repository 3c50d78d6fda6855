//! IDX files (MNIST's format): the whole-array reader and the random-access sample source.
//!
//! Whatever reads must be consistent with its header, write back as an IDX file that reads the same, and agree
//! between the two readers.

#![no_main]

use std::io::Cursor;

use daig_shared::data::{ByteOrder, SampleSource, idx};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let limits = common::limits();
    let whole = idx::read(Cursor::new(data), &limits);
    if let Ok(array) = &whole {
        common::check_raw(array, &limits);
        assert_eq!(array.info.byte_order, ByteOrder::Big, "IDX elements are big-endian");
        let mut written = Vec::new();
        idx::write_header(&mut written, &array.info).expect("the header of an array that was read writes");
        written.extend_from_slice(&array.data);
        assert_eq!(written, data, "an IDX file that was read does not write back the same");
    }
    match SampleSource::idx(Cursor::new(data), &limits) {
        Ok(mut source) => {
            common::check_info(source.info(), &limits);
            let expected = whole.as_ref().ok().map(|array| {
                assert_eq!(&array.info, source.info(), "the two readers disagree on the header");
                common::to_le(&array.info, &array.data)
            });
            common::check_source(&mut source, expected.as_deref());
        }
        Err(_) => assert!(whole.is_err(), "SampleSource::idx refused what idx::read accepted"),
    }
});
