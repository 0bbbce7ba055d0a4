//! The snapshot file format (pure, no I/O): one partition's state at one source offset.
//!
//! ```text
//! offset size field
//!      0    4 magic "SJSN"
//!      4    2 format version (little-endian u16), currently 1
//!      6    2 reserved, zero
//!      8    4 partition (i32)
//!     12    8 epoch (u64) of the plan the writer ran under
//!     20    8 next source offset (i64): the first record not reflected in the state
//!     28    8 creation time, epoch milliseconds (i64)
//!     36    4 body length in bytes (u32)
//!     40    4 CRC-32 of bytes 0..40 and of the body
//!     44    … body: zstd-compressed state
//! ```
//!
//! The version also says how the state inside the body is encoded ([`StateEncoding`]):
//! version 1 held JSON, version 2 (written since) holds postcard, serde's compact binary
//! format, which encodes and decodes several times faster. Both are read.
//!
//! Any damage (short file, wrong length, flipped bit) fails [`decode`]; the caller then falls
//! back to the previous snapshot.

use thiserror::Error;

const MAGIC: [u8; 4] = *b"SJSN";
/// The format version this build writes; it also reads [`JSON_VERSION`].
pub const FORMAT_VERSION: u16 = 2;
/// The first format version, whose state is JSON.
pub const JSON_VERSION: u16 = 1;
const HEADER_LEN: usize = 44;
const ZSTD_LEVEL: i32 = 1;

/// Identifies a snapshot of one partition: snapshots order by epoch, then offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotId {
    /// Plan epoch of the writer.
    pub epoch: u64,
    /// First source offset not reflected in the state.
    pub next_offset: i64,
}

/// The metadata stored in front of the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// Source partition.
    pub partition: i32,
    /// Epoch and offset.
    pub id: SnapshotId,
    /// When the snapshot was taken (epoch milliseconds).
    pub created_ms: i64,
}

/// How the decompressed state of a snapshot is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateEncoding {
    /// Format version 1.
    Json,
    /// Format version 2: postcard.
    Binary,
}

/// A snapshot read back: its header and its decompressed state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The metadata.
    pub header: SnapshotHeader,
    /// How `state` is encoded.
    pub encoding: StateEncoding,
    /// The decompressed state.
    pub state: Vec<u8>,
}

/// Why bytes are not a valid snapshot.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// Fewer bytes than a header.
    #[error("snapshot is truncated: {0} bytes, shorter than the {HEADER_LEN}-byte header")]
    TooShort(usize),
    /// Not a snapshot file.
    #[error("not a streamjob snapshot (bad magic bytes)")]
    BadMagic,
    /// Written by an incompatible build.
    #[error(
        "unsupported snapshot format version {0} (this build reads {JSON_VERSION} to {FORMAT_VERSION})"
    )]
    UnsupportedVersion(u16),
    /// Body shorter or longer than the header says.
    #[error("snapshot body has {actual} bytes, header says {expected}: truncated or corrupt")]
    LengthMismatch {
        /// Length recorded in the header.
        expected: usize,
        /// Length found.
        actual: usize,
    },
    /// Bits changed since writing.
    #[error("snapshot checksum mismatch: corrupt")]
    ChecksumMismatch,
    /// The checksum matched but the body does not decompress.
    #[error("snapshot body does not decompress: {0}")]
    Decompress(String),
    /// State larger than the format can hold.
    #[error("snapshot body of {0} bytes exceeds the 4 GiB format limit")]
    TooLarge(usize),
}

/// Compresses `state` and frames it with `header`.
pub fn encode(header: &SnapshotHeader, state: &[u8]) -> Result<Vec<u8>, SnapshotError> {
    let body = zstd::bulk::compress(state, ZSTD_LEVEL)
        .map_err(|e| SnapshotError::Decompress(e.to_string()))?;
    let body_len = u32::try_from(body.len()).map_err(|_| SnapshotError::TooLarge(body.len()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&header.partition.to_le_bytes());
    out.extend_from_slice(&header.id.epoch.to_le_bytes());
    out.extend_from_slice(&header.id.next_offset.to_le_bytes());
    out.extend_from_slice(&header.created_ms.to_le_bytes());
    out.extend_from_slice(&body_len.to_le_bytes());
    let crc = checksum(&out, &body);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Verifies and unframes a snapshot, returning its header and decompressed state.
pub fn decode(bytes: &[u8]) -> Result<Decoded, SnapshotError> {
    if bytes.len() < HEADER_LEN {
        return Err(SnapshotError::TooShort(bytes.len()));
    }
    let (head, body) = bytes.split_at(HEADER_LEN);
    if head[0..4] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let encoding = match u16::from_le_bytes(array(&head[4..6])) {
        JSON_VERSION => StateEncoding::Json,
        FORMAT_VERSION => StateEncoding::Binary,
        other => return Err(SnapshotError::UnsupportedVersion(other)),
    };
    let expected = u32::from_le_bytes(array(&head[36..40])) as usize;
    if body.len() != expected {
        return Err(SnapshotError::LengthMismatch {
            expected,
            actual: body.len(),
        });
    }
    let crc = u32::from_le_bytes(array(&head[40..44]));
    if crc != checksum(&head[..40], body) {
        return Err(SnapshotError::ChecksumMismatch);
    }
    let header = SnapshotHeader {
        partition: i32::from_le_bytes(array(&head[8..12])),
        id: SnapshotId {
            epoch: u64::from_le_bytes(array(&head[12..20])),
            next_offset: i64::from_le_bytes(array(&head[20..28])),
        },
        created_ms: i64::from_le_bytes(array(&head[28..36])),
    };
    let state =
        zstd::stream::decode_all(body).map_err(|e| SnapshotError::Decompress(e.to_string()))?;
    Ok(Decoded {
        header,
        encoding,
        state,
    })
}

fn checksum(head: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(head);
    hasher.update(body);
    hasher.finalize()
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes
        .try_into()
        .expect("callers slice exactly N bytes out of the fixed-size header")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SnapshotHeader {
        SnapshotHeader {
            partition: 7,
            id: SnapshotId {
                epoch: 3,
                next_offset: 1_234_567,
            },
            created_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn round_trip_keeps_header_and_state() {
        let state = br#"{"windows":[1,2,3]}"#.repeat(100);
        let bytes = encode(&header(), &state).unwrap();
        assert!(bytes.len() < state.len(), "body is compressed");
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.header, header());
        assert_eq!(decoded.encoding, StateEncoding::Binary);
        assert_eq!(decoded.state, state);
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = encode(&header(), b"some state worth keeping").unwrap();
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len]).is_err(),
                "truncation to {len} bytes went unnoticed"
            );
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = encode(&header(), b"some state worth keeping").unwrap();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[i] ^= 1 << bit;
                assert!(
                    decode(&damaged).is_err(),
                    "flip of bit {bit} in byte {i} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn version_1_snapshots_are_read_as_json() {
        let mut bytes = encode(&header(), b"{}").unwrap();
        bytes[4..6].copy_from_slice(&JSON_VERSION.to_le_bytes());
        let (head, body) = bytes.split_at_mut(HEADER_LEN);
        let crc = checksum(&head[..40], body);
        head[40..44].copy_from_slice(&crc.to_le_bytes());
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.encoding, StateEncoding::Json);
        assert_eq!(decoded.state, b"{}");
    }

    #[test]
    fn other_versions_are_refused_by_name() {
        let mut bytes = encode(&header(), b"x").unwrap();
        bytes[4] = 9;
        assert_eq!(decode(&bytes), Err(SnapshotError::UnsupportedVersion(9)));
    }

    #[test]
    fn ids_order_by_epoch_before_offset() {
        let older_epoch_far_offset = SnapshotId {
            epoch: 1,
            next_offset: i64::MAX,
        };
        let newer_epoch_early_offset = SnapshotId {
            epoch: 2,
            next_offset: 0,
        };
        assert!(newer_epoch_early_offset > older_epoch_far_offset);
    }
}
