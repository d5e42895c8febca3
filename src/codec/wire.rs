//! Confluent wire format: magic byte 0, 4-byte big-endian schema id, then the Avro body.

use crate::outcome::{DeadLetterReason, Rejection};

/// The Confluent magic byte.
pub const MAGIC: u8 = 0;
/// Bytes before the Avro body.
pub const HEADER_LEN: usize = 5;

/// Splits a framed payload into (schema id, Avro body).
pub fn split_frame(payload: &[u8]) -> Result<(u32, &[u8]), Rejection> {
    if payload.len() < HEADER_LEN {
        return Err(Rejection::new(
            DeadLetterReason::Truncated,
            format!("payload is {} bytes, shorter than the {HEADER_LEN}-byte Confluent header", payload.len()),
        ));
    }
    if payload[0] != MAGIC {
        return Err(Rejection::new(
            DeadLetterReason::BadMagic,
            format!("first byte is 0x{:02x}, not the Confluent magic byte 0x00", payload[0]),
        ));
    }
    let id = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
    Ok((id, &payload[HEADER_LEN..]))
}

/// Appends the 5-byte Confluent header for `schema_id`.
pub fn write_frame_header(out: &mut Vec<u8>, schema_id: u32) {
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_payloads_are_truncated() {
        for len in 0..HEADER_LEN {
            let err = split_frame(&vec![0u8; len]).unwrap_err();
            assert_eq!(err.reason, DeadLetterReason::Truncated, "len {len}");
        }
    }

    #[test]
    fn wrong_magic_is_bad_magic() {
        let err = split_frame(&[1, 0, 0, 0, 1, 2]).unwrap_err();
        assert_eq!(err.reason, DeadLetterReason::BadMagic);
        assert!(err.detail.contains("0x01"), "{}", err.detail);
    }

    #[test]
    fn header_round_trips() {
        let mut out = vec![];
        write_frame_header(&mut out, 0x0102_0304);
        assert_eq!(out, [0, 1, 2, 3, 4]);
        out.extend_from_slice(b"body");
        assert_eq!(split_frame(&out).unwrap(), (0x0102_0304, &b"body"[..]));
        // A header with an empty body is framed correctly; the decoder decides about the body.
        assert_eq!(split_frame(&[0, 0, 0, 0, 7]).unwrap(), (7, &[][..]));
    }
}
