//! Manifest scalars that are not plain YAML: quantities, durations, times and
//! the enums, each with its own error message.

use std::fmt;

use berth_proto::pb;
use berth_proto::quantity;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Accepts a YAML string or number and hands its text to `parse`, so that
/// `cpu: 2`, `cpu: 0.5` and `cpu: "500m"` all work.
fn quantity_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct Text;
    impl Visitor<'_> for Text {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a quantity such as 500m, 2, 256Mi or 1Gi")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    d.deserialize_any(Text)
}

macro_rules! quantity_type {
    ($(#[$doc:meta])* $name:ident, $parse:path, $format:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name(pub i64);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = quantity_text(d)?;
                $parse(&text).map($name).map_err(de::Error::custom)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&$format(self.0))
            }
        }
    };
}

fn format_count(n: i64) -> String {
    n.to_string()
}

quantity_type!(
    /// CPU in millicores: `500m`, `2`.
    Cpu,
    quantity::parse_cpu,
    quantity::format_cpu
);
quantity_type!(
    /// Memory in bytes: `256Mi`, `1Gi`.
    Memory,
    quantity::parse_memory,
    quantity::format_memory
);
quantity_type!(
    /// Whole units of an extended resource.
    Count,
    quantity::parse_count,
    format_count
);

/// A duration written `10s`, `500ms`, `1m30s`, held in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Millis(pub u64);

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = quantity_text(d)?;
        let duration: std::time::Duration = text
            .parse::<humantime::Duration>()
            .map_err(|e| {
                de::Error::custom(format!(
                    "{text:?} is not a duration such as 10s or 500ms: {e}"
                ))
            })?
            .into();
        u64::try_from(duration.as_millis())
            .map(Millis)
            .map_err(|_| de::Error::custom(format!("{text:?} is too long")))
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = humantime::format_duration(std::time::Duration::from_millis(self.0)).to_string();
        s.serialize_str(&text.replace(' ', ""))
    }
}

/// A point in time, written as RFC 3339 (`2026-11-30T22:45:56.123Z`), held
/// in Unix milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Time(pub i64);

impl Time {
    pub fn is_zero(&self) -> bool {
        self.0 == 0
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let time = humantime::parse_rfc3339_weak(&text)
            .map_err(|e| de::Error::custom(format!("{text:?} is not an RFC 3339 time: {e}")))?;
        let millis = time
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| de::Error::custom(format!("{text:?} is before 1970")))?
            .as_millis();
        i64::try_from(millis)
            .map(Time)
            .map_err(|_| de::Error::custom(format!("{text:?} is too far in the future")))
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let millis = u64::try_from(self.0).unwrap_or(0);
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis);
        s.serialize_str(&humantime::format_rfc3339_millis(time).to_string())
    }
}

/// A `resourceVersion`, written as a number or a string of digits (Kubernetes
/// writes strings).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Version(pub u64);

impl Version {
    pub fn is_zero(&self) -> bool {
        self.0 == 0
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = quantity_text(d)?;
        text.trim().parse().map(Version).map_err(|_| {
            de::Error::custom(format!(
                "{text:?} is not a resource version (a whole number)"
            ))
        })
    }
}

/// Declares a manifest enum with its spellings and its protobuf counterpart.
/// Unknown spellings get serde's "unknown variant …, expected one of …".
macro_rules! manifest_enum {
    ($(#[$doc:meta])* $name:ident => $pb:ty { $($variant:ident = $text:literal => $pbv:ident),+ $(,)? } default $default:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant,)+
        }

        impl From<$name> for $pb {
            fn from(v: $name) -> $pb {
                match v { $($name::$variant => <$pb>::$pbv,)+ }
            }
        }

        impl $name {
            /// The manifest spelling of a stored value (`None` when unset).
            pub fn from_pb(v: i32) -> Option<$name> {
                match <$pb>::try_from(v) {
                    $(Ok(<$pb>::$pbv) => Some($name::$variant),)+
                    _ => None,
                }
            }

            pub fn text(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }

            /// The spelling of a stored value, `-` when unset.
            pub fn show(v: i32) -> &'static str {
                $name::from_pb(v).map_or("-", $name::text)
            }
        }

        impl Default for $name {
            fn default() -> $name {
                $name::$default
            }
        }
    };
}

manifest_enum!(
    /// `prod` or `batch`.
    Tier => pb::Tier { Prod = "prod" => Prod, Batch = "batch" => Batch } default Batch
);
manifest_enum!(
    RestartPolicy => pb::RestartPolicy {
        Always = "Always" => Always,
        OnFailure = "OnFailure" => OnFailure,
        Never = "Never" => Never,
    } default Always
);
manifest_enum!(
    Protocol => pb::Protocol { Tcp = "TCP" => Tcp, Udp = "UDP" => Udp } default Tcp
);
manifest_enum!(
    Operator => pb::Operator {
        In = "In" => In,
        NotIn = "NotIn" => NotIn,
        Exists = "Exists" => Exists,
        DoesNotExist = "DoesNotExist" => DoesNotExist,
    } default In
);
manifest_enum!(
    TaskPhase => pb::TaskPhase {
        Pending = "Pending" => Pending,
        Scheduled = "Scheduled" => Scheduled,
        Starting = "Starting" => Starting,
        Running = "Running" => Running,
        Succeeded = "Succeeded" => Succeeded,
        Failed = "Failed" => Failed,
        Lost = "Lost" => Lost,
        Preempted = "Preempted" => Preempted,
        Killed = "Killed" => Killed,
    } default Pending
);
manifest_enum!(
    JobPhase => pb::JobPhase {
        Running = "Running" => Running,
        Succeeded = "Succeeded" => Succeeded,
        Failed = "Failed" => Failed,
    } default Running
);
manifest_enum!(
    NodeState => pb::NodeState {
        Ready = "Ready" => Ready,
        NotReady = "NotReady" => NotReady,
        Lost = "Lost" => Lost,
    } default NotReady
);
manifest_enum!(
    EventType => pb::EventType { Normal = "Normal" => Normal, Warning = "Warning" => Warning } default Normal
);
manifest_enum!(
    Kind => pb::Kind {
        Namespace = "Namespace" => Namespace,
        Node = "Node" => Node,
        Job = "Job" => Job,
        Task = "Task" => Task,
        Event = "Event" => Event,
        Lease = "Lease" => Lease,
    } default Job
);
