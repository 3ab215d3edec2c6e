//! The customer change feed on the platform's ([`crm_platform::feed`]): what a customer change
//! event says, and WatchCustomerChanges as a mapping of the platform's events.

use crm_platform::feed::{ChangeEvent, Feed, NewChange, WatchRequest};
use crm_proto::crm::common::v1::{ChangeType, Principal};
use crm_proto::crm::customer::v1 as pb;
use futures::{Stream, StreamExt};
use prost::Message;
use tonic::Status;
use uuid::Uuid;

use crate::error::Result;
use crate::store::CustomerRow;

/// `ChangeHeader.resource_type` of every event of this feed.
pub const RESOURCE_TYPE: &str = "crm.customer.v1.Customer";

/// The outbox entry for one customer's change: `customer` is the customer right after it
/// (left out for ERASED, whose event is a tombstone).
pub fn new_change<'a>(
    row: &CustomerRow,
    change_type: ChangeType,
    merged_into: Option<Uuid>,
    changed_paths: &'a [String],
    customer: &pb::Customer,
    actor: &'a Principal,
) -> NewChange<'a> {
    NewChange {
        resource_type: RESOURCE_TYPE,
        resource_id: row.id.to_string(),
        version: row.version,
        change_type,
        changed_paths,
        merged_into_id: merged_into.map(|id| id.to_string()),
        actor,
        snapshot: (change_type != ChangeType::Erased).then(|| customer.encode_to_vec()),
    }
}

fn to_response(event: ChangeEvent) -> pb::WatchCustomerChangesResponse {
    let customer = event.decode_snapshot::<pb::Customer>();
    pb::WatchCustomerChangesResponse {
        event: Some(pb::CustomerChangeEvent {
            header: Some(event.header),
            customer,
        }),
    }
}

/// WatchCustomerChanges: the platform's watch over customer events.
pub async fn watch(
    feed: &Feed,
    req: &pb::WatchCustomerChangesRequest,
) -> Result<impl Stream<Item = Result<pb::WatchCustomerChangesResponse, Status>> + Send + use<>> {
    let events = feed
        .watch(
            RESOURCE_TYPE,
            WatchRequest {
                resume_token: &req.resume_token,
                start_time: req.start_time.as_ref(),
                change_types: &req.change_types,
            },
        )
        .await?;
    Ok(events.map(|event| event.map(to_response)))
}
