#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;

fn all_messages() -> Vec<Message> {
    vec![
        Message::Hello { version: 7 },
        Message::Exec(ExecRequest {
            argv: vec![b"sh".to_vec(), b"-c".to_vec(), vec![0xff, 0xfe]],
            env: vec![(b"A".to_vec(), b"x=y".to_vec())],
            cwd: Some(b"/tmp".to_vec()),
            tty: Some(WinSize { rows: 24, cols: 80 }),
            detach: true,
        }),
        Message::Exec(ExecRequest {
            argv: vec![b"true".to_vec()],
            ..Default::default()
        }),
        Message::Started { pid: 42 },
        Message::Stdin(b"in".to_vec()),
        Message::Stdin(vec![]),
        Message::StdinEof,
        Message::Stdout(vec![1; MAX_DATA_LEN]),
        Message::Stderr(b"err".to_vec()),
        Message::WindowSize(WinSize { rows: 1, cols: 2 }),
        Message::Signal(15),
        Message::Exit(ExitStatus::Code(3)),
        Message::Exit(ExitStatus::Code(-1)),
        Message::Exit(ExitStatus::Signal(9)),
        Message::Error("no such VM".into()),
    ]
}

#[test]
fn every_message_round_trips_through_a_stream() {
    let mut wire = Vec::new();
    for m in all_messages() {
        write_message(&mut wire, &m).unwrap();
    }
    let mut r = &wire[..];
    for m in all_messages() {
        assert_eq!(read_message(&mut r).unwrap(), Some(m));
    }
    assert!(read_message(&mut r).unwrap().is_none());
}

#[test]
fn oversized_length_is_rejected_before_reading_the_body() {
    let mut wire = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
    wire.push(tag::STDOUT);
    assert!(matches!(
        read_message(&mut &wire[..]),
        Err(IoError::Frame(FrameError::BadLength(n))) if n == MAX_FRAME_LEN + 1
    ));
    assert_eq!(decode(&wire), Err(FrameError::BadLength(MAX_FRAME_LEN + 1)));
    assert_eq!(decode(&[0, 0, 0, 0]), Err(FrameError::BadLength(0)));
}

#[test]
fn partial_frames_need_more_bytes() {
    let frame = encode(&Message::Stdout(b"hello".to_vec())).unwrap();
    for cut in 0..frame.len() {
        assert_eq!(decode(&frame[..cut]), Ok(None));
    }
    let (m, used) = decode(&frame).unwrap().unwrap();
    assert_eq!(m, Message::Stdout(b"hello".to_vec()));
    assert_eq!(used, frame.len());
    assert!(matches!(
        read_message(&mut &frame[..frame.len() - 1]),
        Err(IoError::UnexpectedEof)
    ));
}

#[test]
fn malformed_bodies_name_the_problem() {
    assert_eq!(decode_body(&[0x77]), Err(FrameError::UnknownType(0x77)));
    assert_eq!(
        decode_body(&[tag::HELLO, 0]),
        Err(FrameError::Truncated(tag::HELLO))
    );
    assert_eq!(
        decode_body(&[tag::STDIN_EOF, 1, 2]),
        Err(FrameError::Trailing(tag::STDIN_EOF, 2))
    );
    assert_eq!(
        decode_body(&[tag::SIGNAL, 0]),
        Err(FrameError::Invalid("signal number is not 1..=64"))
    );
    // An argv count far beyond what the body could hold is refused without allocating it.
    let mut body = vec![tag::EXEC];
    body.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        decode_body(&body),
        Err(FrameError::TooLong { what: "argv", .. })
    ));
    let mut body = vec![tag::EXEC];
    body.extend_from_slice(&0u32.to_be_bytes());
    assert_eq!(
        decode_body(&body),
        Err(FrameError::Invalid("argv is empty"))
    );
    let big = vec![0u8; MAX_DATA_LEN + 1];
    assert!(matches!(
        encode(&Message::Stdout(big)),
        Err(FrameError::TooLong { what: "data", .. })
    ));
}

#[test]
fn env_names_with_equals_are_rejected() {
    let req = ExecRequest {
        argv: vec![b"x".to_vec()],
        env: vec![(b"A=B".to_vec(), b"c".to_vec())],
        ..Default::default()
    };
    let frame = encode(&Message::Exec(req)).unwrap();
    assert!(matches!(decode(&frame), Err(FrameError::Invalid(_))));
}

#[test]
fn shell_codes_follow_the_128_plus_signal_rule() {
    assert_eq!(ExitStatus::Code(3).shell_code(), 3);
    assert_eq!(ExitStatus::Code(256 + 4).shell_code(), 4);
    assert_eq!(ExitStatus::Signal(15).shell_code(), 143);
}

#[test]
fn long_error_text_is_cut_to_the_limit() {
    let text = "é".repeat(MAX_ERROR_LEN);
    let frame = encode(&Message::Error(text)).unwrap();
    let (m, _) = decode(&frame).unwrap().unwrap();
    let Message::Error(t) = m else {
        panic!("not an error")
    };
    assert!(t.len() <= MAX_ERROR_LEN && t.chars().all(|c| c == 'é'));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
        let _ = read_message(&mut &bytes[..]);
    }

    #[test]
    fn requests_round_trip(
        argv in proptest::collection::vec(proptest::collection::vec(1u8..=255, 0..20), 1..8),
        env in proptest::collection::vec(("[A-Z_]{1,8}", proptest::collection::vec(any::<u8>(), 0..20)), 0..8),
        rows in any::<u16>(), cols in any::<u16>(), tty in any::<bool>(), detach in any::<bool>(),
    ) {
        let req = ExecRequest {
            argv,
            env: env.into_iter().map(|(k, v)| (k.into_bytes(), v)).collect(),
            cwd: None,
            tty: tty.then_some(WinSize { rows, cols }),
            detach,
        };
        let frame = encode(&Message::Exec(req.clone())).unwrap();
        prop_assert_eq!(decode(&frame).unwrap().unwrap().0, Message::Exec(req));
    }
}

#[test]
fn encoder_rejects_a_cwd_the_decoder_would_reject() {
    let req = |len| {
        Message::Exec(ExecRequest {
            argv: vec![b"true".to_vec()],
            cwd: Some(vec![b'd'; len]),
            ..Default::default()
        })
    };
    let frame = encode(&req(MAX_CWD_LEN)).unwrap();
    assert_eq!(decode(&frame).unwrap().unwrap().0, req(MAX_CWD_LEN));
    assert_eq!(
        encode(&req(MAX_CWD_LEN + 1)),
        Err(FrameError::TooLong {
            what: "cwd",
            len: MAX_CWD_LEN + 1,
            limit: MAX_CWD_LEN
        })
    );
}
