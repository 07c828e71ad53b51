//! etcd's errors as gRPC statuses for the front ends. The table itself (code and exact message
//! per error) lives with the error type: [`crate::error::status_of`].

use crate::error::ApiError;
pub use crate::error::status_of;

/// `e` as the gRPC status etcd answers (code and exact message).
pub fn to_status(e: ApiError) -> tonic::Status {
    let (code, msg) = status_of(&e);
    tonic::Status::new(tonic::Code::from(code as i32), msg)
}
