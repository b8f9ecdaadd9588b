//! A client's `Range` header on a cached blob, as `GET /v2/<name>/blobs/<digest>` reads it:
//! the first line is the blob's size (decimal), the rest the header's value. Each header is also
//! tried against a few fixed sizes, the empty blob among them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::handlers::byte_range;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (size, header) = text.split_once('\n').unwrap_or(("", text));
    let sizes = [
        size.trim().parse().ok(),
        Some(0),
        Some(1),
        Some(1000),
        Some(u64::MAX),
    ];
    for size in sizes.into_iter().flatten() {
        for range in [Some(header), None] {
            let Ok((start, end)) = byte_range(range, size) else {
                continue;
            };
            // What the handler then slices and writes as Content-Range (`end - 1`).
            assert!(
                start <= end && end <= size,
                "{range:?} of {size}: {start}..{end}"
            );
            if (start, end) != (0, size) {
                assert!(
                    start < end,
                    "{range:?} of {size}: an empty partial response"
                );
            }
        }
    }
});
