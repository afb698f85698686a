//! cargo-fuzz target: any byte string fed to `FrameCodec::decode` yields frames or an error,
//! never a panic or an allocation beyond what the input justifies.
#![no_main]

use bytes::BytesMut;
use keelson_spdy::FrameCodec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        // Re-encoding what was decoded must work too (header blocks within limits by construction).
        let mut out = Vec::new();
        let _ = FrameCodec::new().encode(&frame, &mut out);
    }
    assert!(buf.capacity() <= data.len() + 600 * 1024);
});
