//! Assertions on the `tonic::Status` a call failed with, reading its rich error details.

use tonic_types::StatusExt;

/// The field paths of a status's `BadRequest` violations (none when it carries no details).
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// The `ErrorInfo` reason of a status ("" when it carries none).
pub fn error_reason(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

/// Asserts a status's code and `ErrorInfo` reason, showing the whole status when they differ.
#[track_caller]
pub fn assert_error(status: &tonic::Status, code: tonic::Code, reason: &str) {
    assert_eq!(
        (status.code(), error_reason(status).as_str()),
        (code, reason),
        "{status:?}"
    );
}

/// Asserts INVALID_ARGUMENT whose `BadRequest` names exactly `fields`, in order.
#[track_caller]
pub fn assert_invalid(status: &tonic::Status, fields: &[&str]) {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(status), fields, "{status:?}");
}
