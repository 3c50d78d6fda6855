//! Feeds arbitrary bytes to `Frame::decode` and the frames that decode to a `Reassembler`.
//!
//! The input is tried twice: whole, as one message (the seeds in `fuzz/seeds/decode_frame/` are valid
//! frames, one per file), and as a sequence of messages, each after a 2-byte little-endian length, all fed
//! to one reassembler so that transfers can span messages. Nothing may panic, and whatever decodes must
//! encode to bytes that decode and encode to the same bytes.

#![no_main]

use daig_shared::wire::{Frame, Reassembler, peek_hello_version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reassembler = Reassembler::new(1 << 22);
    check(&mut reassembler, data);

    let mut reassembler = Reassembler::new(1 << 22);
    let mut rest = data;
    while let [lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (message, next) = tail.split_at(len);
        check(&mut reassembler, message);
        rest = next;
    }
});

fn check(reassembler: &mut Reassembler, message: &[u8]) {
    let _ = peek_hello_version(message);
    let Ok(frame) = Frame::decode(message) else { return };
    // Compared as bytes: a frame holding NaN is not equal to itself.
    let encoded = frame.encode();
    let again = Frame::decode(&encoded).expect("an encoded frame decodes");
    assert_eq!(again.encode(), encoded);
    if let Ok(Some(transfer)) = reassembler.feed(&frame) {
        assert!(transfer.bytes.len() <= 1 << 22);
    }
}
