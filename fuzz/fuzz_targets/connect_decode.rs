//! Feeds arbitrary bytes, in arbitrary chunks, through the Connect envelope decoder and both
//! codecs for envd's request messages. Any panic is a bug: these bytes come from the network.
#![no_main]

use connect::{Codec, envelope::Decoder};
use envd_proto::{filesystem, process};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let (first, second) = rest.split_at(usize::from(split).min(rest.len()));
    let mut decoder = Decoder::new(1 << 20);
    for chunk in [first, second] {
        decoder.push(chunk);
        while let Ok(Some(frame)) = decoder.next_frame() {
            let _ = frame.end_stream_result();
            for codec in [Codec::Json, Codec::Proto] {
                let _ = codec.decode::<process::StartRequest>(&frame.payload);
                let _ = codec.decode::<process::StreamInputRequest>(&frame.payload);
                let _ = codec.decode::<filesystem::WatchDirRequest>(&frame.payload);
            }
        }
    }
    let _ = decoder.finish();
    for codec in [Codec::Json, Codec::Proto] {
        let _ = codec.decode::<process::SendSignalRequest>(data);
        let _ = codec.decode::<filesystem::ListDirRequest>(data);
    }
});
