//! Why a request failed, and the gRPC status each reason maps to.

use berth_proto::object::ObjectKey;
use berth_proto::validate::ValidationErrors;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use berth_proto::connect::{LEADER_METADATA, RETRY_METADATA};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// A field breaks a rule; the message names it.
    #[error("{0}")]
    Invalid(ValidationErrors),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0} not found")]
    NotFound(ObjectKey),
    #[error("namespace {0:?} not found: create it first (berthctl apply -f a Namespace manifest)")]
    NamespaceNotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(ObjectKey),
    /// Optimistic concurrency: the caller read an older version.
    #[error("{key}: {reason}; read the object again and retry")]
    Conflict { key: ObjectKey, reason: String },
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(
        "revision {requested} is compacted (the oldest revision a watch can start from is {oldest}): list again and watch from the list's revision"
    )]
    Compacted { requested: u64, oldest: u64 },
    /// This member is not the leader; `leader` is the leader's id and address
    /// when known.
    #[error("{}", not_leader_message(*.leader_id, .leader_address.as_deref()))]
    NotLeader {
        leader_id: u64,
        leader_address: Option<String>,
    },
    /// Retry later (no quorum, leadership changing, timeouts).
    #[error("{0}")]
    Unavailable(String),
    /// The leader's answer to a forwarded request.
    #[error("{message}")]
    Remote { code: Code, message: String },
    /// The store failed; this member refuses writes until restarted.
    #[error("storage failed, this member refuses writes until restarted: {0}")]
    Storage(String),
    /// The disk filled up under a write; this member serves nothing until
    /// space is freed, then restarts itself from its store.
    #[error(
        "the disk of this member is full; it serves nothing until space is freed, then restarts by itself: {0}"
    )]
    DiskFull(String),
    /// Free space is below the reserve: new writes are refused, the rest
    /// is served. The message names the dir and both sizes.
    #[error("{0}")]
    LowDiskSpace(String),
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The caller may not do this; the message says who and what.
    #[error("{0}")]
    PermissionDenied(String),
}

fn not_leader_message(leader_id: u64, address: Option<&str>) -> String {
    match (leader_id, address) {
        (0, _) => {
            "no leader is elected right now (election in progress or no quorum); retry".into()
        }
        (id, Some(address)) => {
            format!("this member is not the leader; the leader is member {id} at {address}")
        }
        (id, None) => format!("this member is not the leader; the leader is member {id}"),
    }
}

impl ApiError {
    pub fn code(&self) -> Code {
        match self {
            ApiError::Invalid(_) | ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::NotFound(_) | ApiError::NamespaceNotFound(_) => Code::NotFound,
            ApiError::AlreadyExists(_) => Code::AlreadyExists,
            ApiError::Conflict { .. } => Code::Aborted,
            ApiError::QuotaExceeded(_)
            | ApiError::TooLarge(_)
            | ApiError::DiskFull(_)
            | ApiError::LowDiskSpace(_) => Code::ResourceExhausted,
            ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
            ApiError::Compacted { .. } => Code::OutOfRange,
            ApiError::NotLeader { .. }
            | ApiError::Unavailable(_)
            | ApiError::Storage(_)
            | ApiError::ShuttingDown => Code::Unavailable,
            ApiError::Remote { code, .. } => *code,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let mut status = Status::new(e.code(), e.to_string());
        if matches!(e, ApiError::NotLeader { .. } | ApiError::Unavailable(_)) {
            status
                .metadata_mut()
                .insert(RETRY_METADATA, MetadataValue::from_static("1"));
        }
        if let ApiError::NotLeader {
            leader_address: Some(address),
            ..
        } = &e
            && let Ok(value) = MetadataValue::try_from(address.as_str())
        {
            status.metadata_mut().insert(LEADER_METADATA, value);
        }
        status
    }
}

impl From<Status> for ApiError {
    /// A status from another member, passed on as it is.
    fn from(status: Status) -> ApiError {
        ApiError::Remote {
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}

impl ApiError {
    /// The error a failed store turns into: a full disk says so.
    pub fn storage(reason: String) -> ApiError {
        if reason.contains("No space left on device") || reason.contains("StorageFull") {
            ApiError::DiskFull(reason)
        } else {
            ApiError::Storage(reason)
        }
    }

    pub fn is_disk_full(&self) -> bool {
        matches!(self, ApiError::DiskFull(_))
    }
}

/// A batch write's result, as the API returns it.
pub fn batch_result(
    result: &Result<std::sync::Arc<berth_proto::pb::Object>, ApiError>,
) -> berth_proto::pb::BatchResult {
    use berth_proto::pb::{BatchError, BatchResult, batch_result::Result as R};
    BatchResult {
        result: Some(match result {
            Ok(object) => R::Object((**object).clone()),
            Err(e) => R::Error(BatchError {
                code: e.code() as i32,
                message: e.to_string(),
            }),
        }),
    }
}

/// A batch write's result from another member, back in our terms.
pub fn from_batch_result(
    result: berth_proto::pb::BatchResult,
) -> Result<std::sync::Arc<berth_proto::pb::Object>, ApiError> {
    use berth_proto::pb::batch_result::Result as R;
    match result.result {
        Some(R::Object(object)) => Ok(std::sync::Arc::new(object)),
        Some(R::Error(e)) => Err(ApiError::Remote {
            code: Code::from_i32(e.code),
            message: e.message,
        }),
        None => Err(ApiError::Unavailable("an empty result".into())),
    }
}

impl From<ValidationErrors> for ApiError {
    fn from(e: ValidationErrors) -> ApiError {
        ApiError::Invalid(e)
    }
}
