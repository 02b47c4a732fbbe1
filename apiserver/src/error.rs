//! Why a request failed, and the gRPC status each reason maps to.

use berth_proto::object::ObjectKey;
use berth_proto::validate::ValidationErrors;
use tonic::{Code, Status};

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
    /// The store failed; this replica refuses writes until restarted.
    #[error("storage failed, this server refuses writes: {0}")]
    Storage(String),
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl ApiError {
    pub fn code(&self) -> Code {
        match self {
            ApiError::Invalid(_) | ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::NotFound(_) | ApiError::NamespaceNotFound(_) => Code::NotFound,
            ApiError::AlreadyExists(_) => Code::AlreadyExists,
            ApiError::Conflict { .. } => Code::Aborted,
            ApiError::QuotaExceeded(_) | ApiError::TooLarge(_) => Code::ResourceExhausted,
            ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
            ApiError::Compacted { .. } => Code::OutOfRange,
            ApiError::Storage(_) | ApiError::ShuttingDown => Code::Unavailable,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

impl From<ValidationErrors> for ApiError {
    fn from(e: ValidationErrors) -> ApiError {
        ApiError::Invalid(e)
    }
}
