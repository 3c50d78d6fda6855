//! Throughput of encoding and decoding frames that carry a 4 MiB parameter payload, against memcpy of the
//! same bytes in the same run. Run with `cargo bench -p daig-shared --bench frame`.
//!
//! Each figure is the best of several timed batches, which on a shared machine is steadier than the mean.
//! Cases, each over the whole 4 MiB:
//! - memcpy: `copy_from_slice` into a buffer allocated once.
//! - encode: `Frame::encode_into` a reused buffer (the sender's steady state); `encode` allocates anew.
//! - decode: `Frame::decode`, which borrows the chunk bytes (no copy).
//! - receive: decode and feed a `Reassembler`, which copies into the transfer's new buffer.

use std::hint::black_box;
use std::time::{Duration, Instant};

use daig_shared::wire::{
    Frame, MAX_CHUNK_BYTES, Reassembler, TransferId, TransferKind, f32s_to_le_bytes, transfer_frames,
};

const PAYLOAD_BYTES: usize = 4 << 20;
const BATCHES: usize = 15;
const BATCH_TIME: Duration = Duration::from_millis(40);

/// The best time of one call of `f`, over `BATCHES` batches of about `BATCH_TIME` each.
fn best_secs(mut f: impl FnMut()) -> f64 {
    // Warm up, and size the batch so that it takes about BATCH_TIME.
    let start = Instant::now();
    let mut calls = 0u32;
    while start.elapsed() < BATCH_TIME {
        f();
        calls += 1;
    }
    let mut best = f64::INFINITY;
    for _ in 0..BATCHES {
        let start = Instant::now();
        for _ in 0..calls {
            f();
        }
        best = best.min(start.elapsed().as_secs_f64() / f64::from(calls));
    }
    best
}

fn gb_per_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

struct Row {
    case: &'static str,
    frames: usize,
    memcpy: f64,
    encode_reused: f64,
    encode_new: f64,
    decode: f64,
    /// `None` for a frame over MAX_CHUNK_BYTES, which a reassembler refuses.
    receive: Option<f64>,
}

fn measure(case: &'static str, frames: &[Frame<'_>], payload: &[u8]) -> Row {
    let max_frame = frames.iter().map(Frame::encoded_len).max().unwrap_or(0);
    let encoded: Vec<Vec<u8>> = frames.iter().map(Frame::encode).collect();

    let mut copy = vec![0u8; payload.len()];
    let memcpy = best_secs(|| {
        copy.copy_from_slice(black_box(payload));
        black_box(&mut copy);
    });

    let mut out = Vec::with_capacity(max_frame);
    let encode_reused = best_secs(|| {
        for frame in frames {
            out.clear();
            black_box(frame).encode_into(&mut out);
            black_box(&mut out);
        }
    });
    let encode_new = best_secs(|| {
        for frame in frames {
            black_box(black_box(frame).encode());
        }
    });

    let decode = best_secs(|| {
        for bytes in &encoded {
            black_box(Frame::decode_with_limit(black_box(bytes), max_frame).unwrap());
        }
    });

    let chunked = frames.len() > 2;
    let mut reassembler = Reassembler::new(PAYLOAD_BYTES as u64);
    let receive = chunked.then(|| {
        best_secs(|| {
            let mut done = None;
            for bytes in &encoded {
                let frame = Frame::decode_with_limit(black_box(bytes), max_frame).unwrap();
                done = reassembler.feed(&frame).unwrap();
            }
            black_box(done.expect("the transfer completes"));
        })
    });

    let n = payload.len();
    Row {
        case,
        frames: frames.len(),
        memcpy: gb_per_s(n, memcpy),
        encode_reused: gb_per_s(n, encode_reused),
        encode_new: gb_per_s(n, encode_new),
        decode: gb_per_s(n, decode),
        receive: receive.map(|secs| gb_per_s(n, secs)),
    }
}

fn main() {
    let params: Vec<f32> = (0..PAYLOAD_BYTES / 4).map(|i| (i as f32).sin()).collect();
    let payload = f32s_to_le_bytes(&params);
    let kind = TransferKind::Params { version: 1 };

    let chunked: Vec<Frame<'_>> = transfer_frames(TransferId(1), kind.clone(), &payload).collect();
    assert_eq!(chunked.len(), 1 + PAYLOAD_BYTES / MAX_CHUNK_BYTES);
    // The whole payload in one frame: not what the protocol sends, but it shows the cost per frame.
    let mut whole: Vec<Frame<'_>> = transfer_frames(TransferId(1), kind, &[]).collect();
    let Frame::TransferStart(start) = &mut whole[0] else { unreachable!("transfer_frames starts with TransferStart") };
    start.total_bytes = PAYLOAD_BYTES as u64;
    let Frame::Chunk(mut one) = chunked[1].clone() else { unreachable!("the second frame is a chunk") };
    one.bytes = payload.clone();
    whole.push(Frame::Chunk(one));

    let rows = [measure("4 x 1 MiB chunks", &chunked, &payload), measure("1 x 4 MiB frame", &whole, &payload)];

    println!("payload: {PAYLOAD_BYTES} bytes of f32 parameters; GB/s = 1e9 bytes/s; ratio = case / memcpy");
    println!(
        "{:<18} {:>6} {:>7} {:>19} {:>19} {:>19} {:>19}",
        "case", "frames", "memcpy", "encode reused", "encode new", "decode (borrows)", "decode+reassemble"
    );
    for row in rows {
        let cell = |gbps: f64| format!("{gbps:8.2} ({:6.2}x)", gbps / row.memcpy);
        println!(
            "{:<18} {:>6} {:>7.2} {:>19} {:>19} {:>19} {:>19}",
            row.case,
            row.frames,
            row.memcpy,
            cell(row.encode_reused),
            cell(row.encode_new),
            cell(row.decode),
            row.receive.map_or("-".to_owned(), cell),
        );
    }
}
