//! Fuzz the frame decoder with hostile bytes: it must never panic, never accept a frame over the
//! limit, and every message it accepts must re-encode to the same bytes it consumed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmsilo_protocol::{MAX_FRAME_LEN, decode, encode, read_message};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((msg, used))) = decode(rest) {
        assert!(used <= MAX_FRAME_LEN + 4);
        // Error text is decoded lossily, so only lossless messages must round-trip exactly.
        if !matches!(msg, vmsilo_protocol::Message::Error(_)) {
            assert_eq!(encode(&msg).expect("decoded message re-encodes"), &rest[..used]);
        }
        rest = &rest[used..];
    }
    // The streaming reader must agree with the slice decoder on the first frame.
    let mut r = data;
    match (read_message(&mut r), decode(data)) {
        (Ok(Some(a)), Ok(Some((b, _)))) => assert_eq!(a, b),
        (Ok(Some(_)), other) => panic!("reader accepted what decode rejected: {other:?}"),
        _ => {}
    }
});
