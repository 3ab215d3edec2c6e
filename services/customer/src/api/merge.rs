//! MergeCustomers and ListMergeRecords.

use std::collections::HashMap;

use crm_platform::FieldViolations;
use crm_platform::idempotency::{self, Outcome};
use crm_platform::list::ListRequest;
use crm_proto::crm::customer::v1 as pb;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{CustomerApi, Write, customer_subject};
use crate::domain::history::{FieldChange, consent_json, diff};
use crate::domain::{self, CustomerFields, CustomerState, Principal, parse_id};
use crate::error::Result;
use crate::store::{self, CustomerRow};

/// Folds what a duplicate knows into the survivor's fields: empty fields are filled, a second
/// email or phone becomes a contact point, tags, attributes, contact points and addresses are
/// added where new (within the limits).
fn fold(fields: &mut CustomerFields, theirs: CustomerFields) {
    fields.given_name = fields.given_name.take().or(theirs.given_name);
    fields.family_name = fields.family_name.take().or(theirs.family_name);
    fields.company_name = fields.company_name.take().or(theirs.company_name);
    fields.owner = fields.owner.take().or(theirs.owner);
    for (kind, mine, other) in [
        (domain::ContactKind::Phone, &mut fields.phone, theirs.phone),
        (domain::ContactKind::Email, &mut fields.email, theirs.email),
    ] {
        if mine.is_none() {
            *mine = other;
        } else if let Some(value) = other.filter(|v| Some(v) != mine.as_ref()) {
            fields.contact_points.push(domain::ContactPoint {
                kind,
                value,
                label: "merged".into(),
            });
        }
    }
    for tag in theirs.tags {
        if !fields.tags.contains(&tag) {
            fields.tags.push(tag);
        }
    }
    for (key, value) in theirs.attributes.values {
        if !fields.attributes.values.contains_key(&key) {
            if theirs.attributes.timestamp_keys.contains(&key) {
                fields.attributes.timestamp_keys.push(key.clone());
            }
            fields.attributes.values.insert(key, value);
        }
    }
    for cp in theirs.contact_points {
        if !fields.contact_points.contains(&cp) {
            fields.contact_points.push(cp);
        }
    }
    for address in theirs.addresses {
        if !fields.addresses.contains(&address) {
            fields.addresses.push(address);
        }
    }
}

/// The survivor and the duplicates of a valid merge request.
fn validate_merge(req: &pb::MergeCustomersRequest) -> Result<(Uuid, Vec<Uuid>)> {
    let mut v = FieldViolations::new();
    let survivor = parse_id("survivor_id", &req.survivor_id);
    if let Err(e) = &survivor {
        v.extend(e.clone());
    }
    if req.duplicate_ids.is_empty() || req.duplicate_ids.len() > 20 {
        v.add("duplicate_ids", "name 1..=20 customers to merge");
    }
    let mut duplicates = Vec::new();
    for (i, id) in req.duplicate_ids.iter().enumerate() {
        match parse_id(&format!("duplicate_ids[{i}]"), id) {
            Ok(id) if duplicates.contains(&id) => {
                v.add(format!("duplicate_ids[{i}]"), "is repeated")
            }
            Ok(id) if survivor.as_ref().is_ok_and(|s| *s == id) => {
                v.add(format!("duplicate_ids[{i}]"), "is the survivor itself")
            }
            Ok(id) => duplicates.push(id),
            Err(e) => v.extend(e),
        }
    }
    idempotency::validate_request_id("request_id", &req.request_id)?;
    match survivor {
        Ok(survivor) if v.is_empty() => Ok((survivor, duplicates)),
        _ => Err(v.into()),
    }
}

/// The current consent per channel of one customer.
async fn consents_by_channel(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<HashMap<i32, pb::Consent>> {
    let mut current = store::current_consents(conn, &[id]).await?;
    Ok(current
        .remove(&id)
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.channel, c))
        .collect())
}

/// `consents.<CHANNEL>` changes between two sets of current consents.
fn consent_changes(
    before: &HashMap<i32, pb::Consent>,
    after: &HashMap<i32, pb::Consent>,
) -> Vec<FieldChange> {
    let mut channels: Vec<i32> = after.keys().copied().collect();
    channels.sort();
    channels
        .into_iter()
        .filter(|channel| before.get(channel) != after.get(channel))
        .map(|channel| {
            let name = crm_proto::crm::common::v1::Channel::try_from(channel)
                .map(|c| c.as_str_name().trim_start_matches("CHANNEL_").to_string())
                .unwrap_or_else(|_| channel.to_string());
            FieldChange {
                path: format!("consents.{name}"),
                old_value: before.get(&channel).map(consent_json),
                new_value: after.get(&channel).map(consent_json),
            }
        })
        .collect()
}

impl CustomerApi {
    pub(super) async fn merge(
        &self,
        req: pb::MergeCustomersRequest,
        actor: &Principal,
    ) -> Result<pb::MergeCustomersResponse> {
        let (survivor, duplicates) = validate_merge(&req)?;
        // The survivor's record holds what was folded in from each duplicate.
        let about: Vec<_> = std::iter::once(survivor)
            .chain(duplicates.iter().copied())
            .map(customer_subject)
            .collect();
        let mut tx = self.begin().await?;
        let outcome = idempotency::run(
            &mut tx,
            "MergeCustomers",
            &req.request_id,
            &req,
            &about,
            async |tx| self.merge_in(tx, survivor, &duplicates, actor).await,
        )
        .await?;
        match outcome {
            Outcome::Replayed(response) => Ok(response),
            Outcome::Ran(response, writes) => {
                self.finish_write(tx, &writes, actor).await?;
                Ok(response)
            }
        }
    }

    /// Merges `duplicates` into `survivor` in `tx`: the response, and the writes to publish.
    async fn merge_in(
        &self,
        tx: &mut PgConnection,
        survivor: Uuid,
        duplicates: &[Uuid],
        actor: &Principal,
    ) -> Result<(pb::MergeCustomersResponse, Vec<Write>)> {
        // Lock in id order so concurrent merges cannot deadlock.
        let mut all = duplicates.to_vec();
        all.push(survivor);
        all.sort();
        let mut locked = Vec::new();
        for id in &all {
            locked.push(self.lock_active(tx, *id, "").await?);
        }
        let mut writes = Vec::new();
        let mut survivor_row: Option<CustomerRow> = None;
        for row in locked {
            if row.id == survivor {
                survivor_row = Some(row);
            } else {
                // The duplicate leaves the active set first, freeing its email for the survivor.
                let merged =
                    store::set_state(tx, row.id, CustomerState::Merged, Some(survivor), actor)
                        .await?;
                writes.push((row, Write::merged(merged, survivor)));
            }
        }
        let survivor_row = survivor_row.ok_or(crate::error::Error::NotFound(survivor))?;
        let (survivor_write, merge_record) = self
            .fold_survivor(tx, &survivor_row, &writes, duplicates, actor)
            .await?;
        let mut writes: Vec<Write> = writes.into_iter().map(|(_, w)| w).collect();
        let survivor_proto = store::to_protos(tx, std::slice::from_ref(&survivor_write.row))
            .await?
            .remove(0);
        writes.push(survivor_write);
        let response = pb::MergeCustomersResponse {
            customer: Some(survivor_proto),
            merge_record: Some(merge_record),
        };
        Ok((response, writes))
    }

    /// Gives the survivor what the duplicates knew and their history, records the fields it
    /// gained (consents per channel included) and the merge.
    async fn fold_survivor(
        &self,
        tx: &mut PgConnection,
        survivor: &CustomerRow,
        duplicates: &[(CustomerRow, Write)],
        duplicate_ids: &[Uuid],
        actor: &Principal,
    ) -> Result<(Write, pb::MergeRecord)> {
        let before = survivor.fields();
        let mut fields = before.clone();
        for (dup, _) in duplicates {
            fold(&mut fields, dup.fields());
        }
        fields.tags.truncate(domain::MAX_TAGS);
        fields.contact_points.truncate(domain::MAX_CONTACT_POINTS);
        fields.addresses.truncate(domain::MAX_ADDRESSES);
        let consents_before = consents_by_channel(tx, survivor.id).await?;
        store::reassign_history(tx, survivor.id, duplicate_ids).await?;
        let consents_after = consents_by_channel(tx, survivor.id).await?;
        let row = store::update_fields(tx, survivor.id, &fields, actor).await?;
        let mut changes = diff(&before, &fields);
        changes.extend(consent_changes(&consents_before, &consents_after));
        store::insert_field_changes(tx, survivor.id, row.version, actor, &changes).await?;
        let record =
            store::insert_merge(tx, Uuid::now_v7(), survivor.id, duplicate_ids, actor).await?;
        let mut paths: Vec<String> = Vec::new();
        for change in changes {
            let path = if change.path.starts_with("consents.") {
                "consents".to_string()
            } else {
                change.path
            };
            if !paths.contains(&path) {
                paths.push(path);
            }
        }
        Ok((Write::updated(row, paths), record))
    }

    /// Merges oldest first, of one survivor or all, one page at a time.
    pub(super) async fn list_merges(
        &self,
        req: pb::ListMergeRecordsRequest,
    ) -> Result<pb::ListMergeRecordsResponse> {
        let survivor = if req.customer_id.is_empty() {
            None
        } else {
            Some(parse_id("customer_id", &req.customer_id)?)
        };
        let page = self
            .page_under_customer(
                &store::MERGE_RECORDS,
                &ListRequest::new(req.page_size, &req.page_token)
                    .filter(&req.filter)
                    .scope(&[&req.customer_id]),
                survivor,
                async |conn, list| store::merge_records_page(conn, list, survivor).await,
            )
            .await?;
        Ok(pb::ListMergeRecordsResponse {
            merge_records: page.rows,
            next_page_token: page.next_page_token,
        })
    }
}
