//! `berth.internal.v1.Change`, written by hand so that its objects are
//! shared (`Arc`) rather than owned.
//!
//! A history record keeps every object a revision wrote, and the state
//! machine keeps the same objects: with prost's generated type, each write
//! deep-copied its new object (and, for an update, the old one) into its
//! record, on every member. Encoded and decoded exactly as the generated
//! type was (`storage.proto`), so stored records read the same.

use std::ops::Range;
use std::sync::Arc;

use prost::Message as _;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType, encode_key, encode_varint, int32, message, uint64};

use crate::internal::HistoryRecord;
use crate::pb;

/// What one write did to one object (see `storage.proto`).
#[derive(Clone, PartialEq, Debug, Default)]
pub struct Change {
    /// ADDED, MODIFIED or DELETED (`pb::WatchEventType`).
    pub r#type: i32,
    /// The object after the change; for DELETED, the object as it was, with
    /// the deletion's revision as resource_version.
    pub object: Option<Arc<pb::Object>>,
    /// The object before a MODIFIED change.
    pub prev: Option<Arc<pb::Object>>,
}

impl Change {
    /// The change's type; UNSPECIFIED for a value no version knows.
    pub fn r#type(&self) -> pb::WatchEventType {
        pb::WatchEventType::try_from(self.r#type).unwrap_or_default()
    }
}

impl prost::Message for Change {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if self.r#type != 0 {
            int32::encode(1, &self.r#type, buf);
        }
        if let Some(object) = &self.object {
            message::encode(2, &**object, buf);
        }
        if let Some(prev) = &self.prev {
            message::encode(3, &**prev, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        let merge_object = |slot: &mut Option<Arc<pb::Object>>, buf: &mut _, ctx| {
            let object = Arc::make_mut(slot.get_or_insert_with(Arc::default));
            message::merge(wire_type, object, buf, ctx)
        };
        match tag {
            1 => int32::merge(wire_type, &mut self.r#type, buf, ctx).map_err(|mut e| {
                e.push("Change", "type");
                e
            }),
            2 => merge_object(&mut self.object, buf, ctx).map_err(|mut e| {
                e.push("Change", "object");
                e
            }),
            3 => merge_object(&mut self.prev, buf, ctx).map_err(|mut e| {
                e.push("Change", "prev");
                e
            }),
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        (if self.r#type != 0 {
            int32::encoded_len(1, &self.r#type)
        } else {
            0
        }) + self
            .object
            .as_ref()
            .map_or(0, |o| message::encoded_len(2, &**o))
            + self
                .prev
                .as_ref()
                .map_or(0, |o| message::encoded_len(3, &**o))
    }

    fn clear(&mut self) {
        *self = Change::default();
    }
}

/// Appends `record` to `buf` as one of a `HistoryGroup`'s records (field
/// 1), exactly as `prost::encoding::message::encode(1, record, buf)` would,
/// and tells `found` where in `buf` each change's object lies as its field
/// (tag 2, length, message). A state segment stores an object as field 2
/// too, so a checkpoint can copy these bytes instead of encoding the object
/// a second time.
pub fn encode_group_record(
    record: &HistoryRecord,
    buf: &mut Vec<u8>,
    mut found: impl FnMut(&Arc<pb::Object>, Range<usize>),
) {
    encode_key(1, WireType::LengthDelimited, buf);
    encode_varint(record.encoded_len() as u64, buf);
    if record.revision != 0 {
        uint64::encode(1, &record.revision, buf);
    }
    for change in &record.changes {
        encode_key(2, WireType::LengthDelimited, buf);
        encode_varint(change.encoded_len() as u64, buf);
        let start = buf.len();
        change.encode_raw(buf);
        if let Some(object) = &change.object {
            // The type comes before the object, the previous object after.
            let type_len = if change.r#type != 0 {
                int32::encoded_len(1, &change.r#type)
            } else {
                0
            };
            let prev_len = change
                .prev
                .as_ref()
                .map_or(0, |prev| message::encoded_len(3, &**prev));
            found(object, start + type_len..buf.len() - prev_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generated type this one replaces, for comparing encodings.
    #[derive(Clone, PartialEq, prost::Message)]
    struct GeneratedChange {
        #[prost(enumeration = "pb::WatchEventType", tag = "1")]
        r#type: i32,
        #[prost(message, optional, tag = "2")]
        object: Option<pb::Object>,
        #[prost(message, optional, tag = "3")]
        prev: Option<pb::Object>,
    }

    fn job(name: &str, replicas: u32) -> pb::Object {
        pb::Object::from(pb::Job {
            metadata: Some(pb::ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                resource_version: 7,
                ..Default::default()
            }),
            spec: Some(pb::JobSpec {
                replicas,
                ..Default::default()
            }),
            status: None,
        })
    }

    #[test]
    fn encodes_and_decodes_as_the_generated_type() {
        let cases = [
            GeneratedChange::default(),
            GeneratedChange {
                r#type: pb::WatchEventType::Added as i32,
                object: Some(job("a", 1)),
                prev: None,
            },
            GeneratedChange {
                r#type: pb::WatchEventType::Modified as i32,
                object: Some(job("a", 2)),
                prev: Some(job("a", 1)),
            },
        ];
        for generated in cases {
            let shared = Change {
                r#type: generated.r#type,
                object: generated.object.clone().map(Arc::new),
                prev: generated.prev.clone().map(Arc::new),
            };
            let bytes = generated.encode_to_vec();
            assert_eq!(shared.encode_to_vec(), bytes);
            assert_eq!(shared.encoded_len(), bytes.len());
            assert_eq!(Change::decode(bytes.as_slice()).ok(), Some(shared));
        }
    }

    #[test]
    fn a_truncated_change_is_an_error() {
        let bytes = Change {
            r#type: pb::WatchEventType::Added as i32,
            object: Some(Arc::new(job("a", 1))),
            prev: None,
        }
        .encode_to_vec();
        assert!(Change::decode(&bytes[..bytes.len() - 3]).is_err());
    }

    #[test]
    fn a_group_record_encodes_as_prost_does_and_finds_each_object_as_a_segment_field() {
        let record = HistoryRecord {
            revision: 42,
            changes: vec![
                Change {
                    r#type: pb::WatchEventType::Added as i32,
                    object: Some(Arc::new(job("a", 1))),
                    prev: None,
                },
                Change {
                    r#type: pb::WatchEventType::Modified as i32,
                    object: Some(Arc::new(job("b", 3))),
                    prev: Some(Arc::new(job("b", 2))),
                },
                Change {
                    r#type: pb::WatchEventType::Deleted as i32,
                    object: Some(Arc::new(job("c", 5))),
                    prev: None,
                },
                Change::default(),
            ],
        };
        let mut expected = b"before".to_vec();
        message::encode(1, &record, &mut expected);
        let mut buf = b"before".to_vec();
        let mut found = Vec::new();
        encode_group_record(&record, &mut buf, |object, range| {
            found.push((object.clone(), range))
        });
        assert_eq!(buf, expected);
        let objects: Vec<_> = record
            .changes
            .iter()
            .filter_map(|c| c.object.clone())
            .collect();
        assert_eq!(found.len(), objects.len());
        for ((object, range), wanted) in found.iter().zip(&objects) {
            assert!(Arc::ptr_eq(object, wanted));
            let mut field = Vec::new();
            message::encode(2, &**object, &mut field);
            assert_eq!(&buf[range.clone()], field.as_slice());
        }
    }
}
