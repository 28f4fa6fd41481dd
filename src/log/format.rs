//! The bytes of a segment file. All integers are little-endian.
//!
//! A segment is named `{base_offset:020}.seg` and starts with a 48-byte header:
//!
//! | bytes  | field          | notes                                          |
//! |--------|----------------|------------------------------------------------|
//! | 0..8   | magic          | `PRKDLOG\0`                                    |
//! | 8..12  | format version | `u32`, currently 1                             |
//! | 12..16 | header length  | `u32`, 48                                      |
//! | 16..24 | base offset    | `u64`, offset of the first record              |
//! | 24..40 | log id         | UUID shared by every segment of one log        |
//! | 40..44 | header CRC     | CRC32C of bytes 0..40                          |
//! | 44..48 | reserved       | zero                                           |
//!
//! Records follow back to back, each framed as:
//!
//! | bytes    | field   | notes                                   |
//! |----------|---------|-----------------------------------------|
//! | 0..4     | len     | `u32`, payload length                   |
//! | 4..8     | crc32c  | CRC32C of the payload                   |
//! | 8..8+len | payload | see below                               |
//!
//! Payload, schema version 1:
//!
//! | bytes      | field          | notes                                                  |
//! |------------|----------------|--------------------------------------------------------|
//! | 0..8       | offset         | `u64`, global offset (checked on read)                 |
//! | 8..16      | lot_seq        | `u64`, per-lot version                                 |
//! | 16..32     | event_id       | UUID bytes                                             |
//! | 32..40     | occurred_at    | `i64`, microseconds since the Unix epoch, UTC          |
//! | 40..48     | recorded_at    | `i64`, microseconds since the Unix epoch, UTC          |
//! | 48         | event type     | 1 registered, 2 capacity changed, 3 arrived, 4 departed, 5 counted |
//! | 49         | schema version | `u8`                                                   |
//! | 50         | flags          | bit 0: `event_id` came from the client                 |
//! | 51         | lot id length  | `u8`, n ≤ 64                                           |
//! | 52..56     | occupancy      | `u32`, lot occupancy after the event                   |
//! | 56..60     | capacity       | `u32`, lot capacity after the event                    |
//! | 60..64     | value          | `u32`: capacity (registered, capacity changed), count (counted), else 0 |
//! | 64..64+n   | lot id         | UTF-8, normalised                                      |
//! | 64+n..     | name           | UTF-8, `LotRegistered` only                            |

use uuid::Uuid;

use crate::domain::{
    Capacity, EventType, LotEvent, LotId, NewEvent, RecordedEvent, Timestamp, MAX_LOT_ID_LEN,
    MAX_NAME_LEN, SCHEMA_VERSION,
};

pub const MAGIC: &[u8; 8] = b"PRKDLOG\0";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_LEN: usize = 48;
pub const FRAME_LEN: usize = 8;
const FIXED_PAYLOAD: usize = 64;
/// No valid payload is longer than this; a larger length field means corruption. The
/// writer refuses any event whose payload would be longer ([`payload_len`]), and the
/// domain's limits keep every event well inside it (checked at compile time below).
pub const MAX_PAYLOAD: usize = 4096;
const _: () = assert!(FIXED_PAYLOAD + MAX_LOT_ID_LEN + MAX_NAME_LEN <= MAX_PAYLOAD);
const FLAG_CLIENT_ID: u8 = 1;

/// The parsed header of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub base_offset: u64,
    pub log_id: Uuid,
}

pub fn encode_header(h: &Header) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[0..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    b[16..24].copy_from_slice(&h.base_offset.to_le_bytes());
    b[24..40].copy_from_slice(h.log_id.as_bytes());
    let crc = crc32c::crc32c(&b[0..40]);
    b[40..44].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Why a header could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("header is incomplete ({0} of {HEADER_LEN} bytes)")]
    Short(usize),
    #[error("not a parkade log segment (bad magic)")]
    Magic,
    #[error("segment format version {0} is not supported (this build reads {FORMAT_VERSION})")]
    Version(u32),
    #[error("header checksum mismatch")]
    Crc,
}

pub fn decode_header(b: &[u8]) -> Result<Header, HeaderError> {
    if b.len() < HEADER_LEN {
        return Err(HeaderError::Short(b.len()));
    }
    if &b[0..8] != MAGIC {
        return Err(HeaderError::Magic);
    }
    let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(HeaderError::Version(version));
    }
    let crc = u32::from_le_bytes(b[40..44].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&b[0..40]) {
        return Err(HeaderError::Crc);
    }
    Ok(Header {
        base_offset: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
        log_id: Uuid::from_slice(&b[24..40]).expect("16 bytes"),
    })
}

/// The payload length of `e`'s record: what the decoder checks against
/// [`MAX_PAYLOAD`] (and a lot id of at most [`MAX_LOT_ID_LEN`] bytes).
pub fn payload_len(e: &NewEvent) -> usize {
    let name = match &e.event {
        LotEvent::LotRegistered { name, .. } => name.len(),
        _ => 0,
    };
    FIXED_PAYLOAD + e.lot_id.as_str().len() + name
}

/// Whether the decoder reads `e`'s record back: its payload fits [`MAX_PAYLOAD`] and
/// its lot id the one-byte length field. The log refuses events that do not.
pub fn encodable(e: &NewEvent) -> bool {
    let lot = e.lot_id.as_str().len();
    (1..=MAX_LOT_ID_LEN).contains(&lot) && payload_len(e) <= MAX_PAYLOAD
}

/// Append one framed record to `buf`.
pub fn encode_record(buf: &mut Vec<u8>, offset: u64, recorded_at: Timestamp, e: &NewEvent) {
    let lot = e.lot_id.as_str().as_bytes();
    let (value, name): (u32, &[u8]) = match &e.event {
        LotEvent::LotRegistered { name, capacity } => (capacity.get(), name.as_bytes()),
        LotEvent::LotCapacityChanged { capacity } => (capacity.get(), &[]),
        LotEvent::OccupancyCounted { count } => (*count, &[]),
        LotEvent::VehicleArrived | LotEvent::VehicleDeparted => (0, &[]),
    };
    let len = FIXED_PAYLOAD + lot.len() + name.len();
    let start = buf.len();
    buf.reserve(FRAME_LEN + len);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&[0u8; 4]);
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&e.lot_seq.to_le_bytes());
    buf.extend_from_slice(e.event_id.as_bytes());
    buf.extend_from_slice(&e.occurred_at.micros().to_le_bytes());
    buf.extend_from_slice(&recorded_at.micros().to_le_bytes());
    buf.push(e.event.event_type() as u8);
    buf.push(SCHEMA_VERSION);
    buf.push(if e.client_event_id { FLAG_CLIENT_ID } else { 0 });
    buf.push(lot.len() as u8);
    buf.extend_from_slice(&e.occupancy.to_le_bytes());
    buf.extend_from_slice(&e.capacity.to_le_bytes());
    buf.extend_from_slice(&value.to_le_bytes());
    buf.extend_from_slice(lot);
    buf.extend_from_slice(name);
    let crc = crc32c::crc32c(&buf[start + FRAME_LEN..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The result of looking at the bytes where a record should start.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole record with a matching checksum: its payload and framed length.
    Record(&'a [u8], usize),
    /// Fewer bytes than the frame announces: a torn write (or the end of the data read).
    Incomplete,
    /// The length is impossible or the checksum does not match.
    Corrupt(&'static str),
}

pub fn next_frame(b: &[u8]) -> Frame<'_> {
    if b.len() < FRAME_LEN {
        return Frame::Incomplete;
    }
    let len = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")) as usize;
    if !(FIXED_PAYLOAD..=MAX_PAYLOAD).contains(&len) {
        return Frame::Corrupt("impossible record length");
    }
    if b.len() < FRAME_LEN + len {
        return Frame::Incomplete;
    }
    let crc = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
    let payload = &b[FRAME_LEN..FRAME_LEN + len];
    if crc32c::crc32c(payload) != crc {
        return Frame::Corrupt("record checksum mismatch");
    }
    Frame::Record(payload, FRAME_LEN + len)
}

/// Read the offset of a payload without decoding the rest.
pub fn payload_offset(p: &[u8]) -> u64 {
    u64::from_le_bytes(p[0..8].try_into().expect("8 bytes"))
}

/// The event schema version of a checksummed payload, without decoding the rest.
pub fn payload_schema(p: &[u8]) -> u8 {
    p[49]
}

/// The lot id bytes of a checksummed payload, without decoding the rest (empty when
/// the length byte is impossible; the decoder refuses such a record).
pub fn payload_lot(p: &[u8]) -> &[u8] {
    let lot_len = usize::from(p[51]);
    p.get(FIXED_PAYLOAD..FIXED_PAYLOAD + lot_len)
        .unwrap_or_default()
}

/// Decode a checksummed payload. `intern` lets a reader share lot id strings.
pub fn decode_payload(
    p: &[u8],
    intern: &mut impl FnMut(&str) -> LotId,
) -> Result<RecordedEvent, &'static str> {
    let u64_at = |i: usize| u64::from_le_bytes(p[i..i + 8].try_into().expect("8 bytes"));
    let u32_at = |i: usize| u32::from_le_bytes(p[i..i + 4].try_into().expect("4 bytes"));
    let kind = EventType::from_u8(p[48]).ok_or("unknown event type")?;
    let schema_version = payload_schema(p);
    if schema_version == 0 || schema_version > SCHEMA_VERSION {
        return Err("unsupported event schema version");
    }
    let lot_len = usize::from(p[51]);
    if lot_len == 0 || lot_len > MAX_LOT_ID_LEN || FIXED_PAYLOAD + lot_len > p.len() {
        return Err("bad lot id length");
    }
    let lot = std::str::from_utf8(&p[FIXED_PAYLOAD..FIXED_PAYLOAD + lot_len])
        .map_err(|_| "lot id is not UTF-8")?;
    let rest = &p[FIXED_PAYLOAD + lot_len..];
    let value = u32_at(60);
    let capacity = || Capacity::new(i64::from(value)).map_err(|_| "bad capacity");
    let event = match kind {
        EventType::LotRegistered => LotEvent::LotRegistered {
            name: std::str::from_utf8(rest)
                .map_err(|_| "name is not UTF-8")?
                .to_owned(),
            capacity: capacity()?,
        },
        EventType::LotCapacityChanged => LotEvent::LotCapacityChanged {
            capacity: capacity()?,
        },
        EventType::VehicleArrived => LotEvent::VehicleArrived,
        EventType::VehicleDeparted => LotEvent::VehicleDeparted,
        EventType::OccupancyCounted => LotEvent::OccupancyCounted { count: value },
    };
    Ok(RecordedEvent {
        offset: u64_at(0),
        recorded_at: Timestamp::from_micros(u64_at(40) as i64),
        schema_version,
        event: NewEvent {
            lot_id: intern(lot),
            lot_seq: u64_at(8),
            event_id: Uuid::from_slice(&p[16..32]).expect("16 bytes"),
            client_event_id: p[50] & FLAG_CLIENT_ID != 0,
            occurred_at: Timestamp::from_micros(u64_at(32) as i64),
            event,
            occupancy: u32_at(52),
            capacity: u32_at(56),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(event: LotEvent) -> NewEvent {
        NewEvent {
            lot_id: LotId::parse("north-1").unwrap(),
            lot_seq: 7,
            event_id: Uuid::now_v7(),
            client_event_id: true,
            occurred_at: Timestamp::from_micros(1_764_234_000_123_456),
            event,
            occupancy: 3,
            capacity: 10,
        }
    }

    #[test]
    fn records_round_trip() {
        for event in [
            LotEvent::LotRegistered {
                name: "North lot 1".into(),
                capacity: Capacity::new(10).unwrap(),
            },
            LotEvent::LotCapacityChanged {
                capacity: Capacity::new(12).unwrap(),
            },
            LotEvent::VehicleArrived,
            LotEvent::VehicleDeparted,
            LotEvent::OccupancyCounted { count: 4 },
        ] {
            let e = sample(event);
            let mut buf = Vec::new();
            encode_record(&mut buf, 42, Timestamp::from_micros(99), &e);
            let Frame::Record(p, n) = next_frame(&buf) else {
                panic!("not a record")
            };
            assert_eq!(n, buf.len());
            let r = decode_payload(p, &mut |s| LotId::parse(s).unwrap()).unwrap();
            assert_eq!(r.offset, 42);
            assert_eq!(r.recorded_at.micros(), 99);
            assert_eq!(r.event, e);
        }
    }

    #[test]
    fn a_flipped_byte_or_short_read_is_detected() {
        let mut buf = Vec::new();
        encode_record(
            &mut buf,
            1,
            Timestamp::from_micros(0),
            &sample(LotEvent::VehicleArrived),
        );
        assert_eq!(next_frame(&buf[..buf.len() - 1]), Frame::Incomplete);
        let last = buf.len() - 1;
        buf[last] ^= 0x40;
        assert!(matches!(next_frame(&buf), Frame::Corrupt(_)));
    }

    #[test]
    fn headers_round_trip_and_reject_damage() {
        let h = Header {
            base_offset: 1234,
            log_id: Uuid::new_v4(),
        };
        let mut b = encode_header(&h);
        assert_eq!(decode_header(&b), Ok(h));
        assert_eq!(decode_header(&b[..10]), Err(HeaderError::Short(10)));
        b[20] ^= 1;
        assert_eq!(decode_header(&b), Err(HeaderError::Crc));
    }
}
