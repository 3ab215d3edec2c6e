//! ScanDuplicateCustomers: a long-running operation that runs FindDuplicateCustomers' matching
//! (`store::duplicate_candidates`) for every active customer and groups the pairs it finds.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use crm_platform::operations::{OperationContext, Outcome, failure, pack};
use crm_platform::{ApiError, FieldViolations, idempotency};
use crm_proto::crm::common::v1::Principal as CommonPrincipal;
use crm_proto::crm::customer::v1 as pb;
use crm_proto::google::longrunning::Operation;
use crm_proto::google::rpc;
use sqlx::PgPool;
use uuid::Uuid;

use super::CustomerApi;
use crate::error::{Error, Result};
use crate::store;

/// The operation kind of a duplicate scan.
pub const SCAN_KIND: &str = "customer.scan_duplicates";

/// The type of the scan's response.
const RESPONSE_TYPE: &str = "crm.customer.v1.ScanDuplicateCustomersResponse";

/// `min_score` when the request leaves it unset (the contract's default).
const DEFAULT_MIN_SCORE: f64 = 0.8;

/// Customers read per batch; progress is recorded and cancellation checked after each.
const BATCH: i64 = 100;

/// Candidates asked for per customer: FindDuplicateCustomers' largest page.
const CANDIDATES_PER_CUSTOMER: i64 = 50;

const METHOD: &str = "ScanDuplicateCustomers";

impl CustomerApi {
    /// Starts a scan, or returns the operation a request with the same `request_id` started.
    pub(super) async fn start_scan(
        &self,
        req: pb::ScanDuplicateCustomersRequest,
        requested_by: &CommonPrincipal,
    ) -> Result<Operation> {
        let mut v = FieldViolations::new();
        if let Some(score) = req.min_score
            && !(0.0..=1.0).contains(&score)
        {
            v.add("min_score", "must be between 0 and 1");
        }
        v.into_result()?;
        idempotency::validate_request_id("request_id", &req.request_id)?;
        let mut tx = self.begin().await?;
        let outcome = idempotency::run(
            &mut tx,
            METHOD,
            &req.request_id,
            &req,
            // The operation as started names no customer.
            &[],
            async |conn| -> Result<(Operation, ())> {
                let operation = self
                    .operations
                    .start(conn, SCAN_KIND, &req, requested_by)
                    .await?;
                Ok((operation, ()))
            },
        )
        .await?;
        let operation = match outcome {
            idempotency::Outcome::Replayed(started) => {
                drop(tx);
                return self.current(started).await;
            }
            idempotency::Outcome::Ran(operation, ()) => operation,
        };
        tx.commit().await?;
        self.operations.wake();
        Ok(operation)
    }

    /// The operation as it is now (a retry should see its progress), or as it was started if
    /// it has since been deleted.
    async fn current(&self, started: Operation) -> Result<Operation> {
        let id = crm_platform::operations::parse_operation_name("name", &started.name)
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("stored operation name")))?;
        Ok(self.operations.get(id).await?.unwrap_or(started))
    }
}

/// Runs a scan: the handler of [`SCAN_KIND`]. Resumable: it only reads, so a rerun from the
/// start after a restart gives the same answer.
pub async fn run_scan(db: PgPool, ctx: OperationContext) -> Outcome {
    let req: pb::ScanDuplicateCustomersRequest = ctx.request()?;
    let min_score = req.min_score.unwrap_or(DEFAULT_MIN_SCORE);
    let (found, scanned) = scan_pairs(&db, &ctx, min_score).await?;
    ctx.progress("grouping", scanned, Some(scanned)).await;
    let response = pb::ScanDuplicateCustomersResponse {
        groups: group(found),
        scanned_count: scanned,
    };
    Ok(pack(RESPONSE_TYPE, &response))
}

fn db_failure(err: impl Into<Error>) -> rpc::Status {
    failure(ApiError::from(err.into()))
}

/// A pair of probable duplicates, the smaller id first.
#[derive(Debug, Default)]
struct Pair {
    score: f64,
    reasons: BTreeSet<String>,
}

/// What the scan found: each pair scoring at least `min_score`, and when each customer in a
/// pair was created (groups list the oldest first).
struct Found {
    pairs: BTreeMap<(Uuid, Uuid), Pair>,
    created: HashMap<Uuid, DateTime<Utc>>,
}

/// Scans every active customer in id order; returns the pairs and how many it scanned.
async fn scan_pairs(
    db: &PgPool,
    ctx: &OperationContext,
    min_score: f64,
) -> Result<(Found, i64), rpc::Status> {
    let mut conn = db.acquire().await.map_err(db_failure)?;
    let mut total = store::count_active(&mut conn).await.map_err(db_failure)?;
    drop(conn);
    ctx.progress("scanning", 0, Some(total)).await;
    let mut found = Found {
        pairs: BTreeMap::new(),
        created: HashMap::new(),
    };
    let (mut after, mut scanned) = (None, 0i64);
    loop {
        ctx.checkpoint()?;
        // One connection per batch, given back between batches so a long scan never holds
        // one for its whole run.
        let mut conn = db.acquire().await.map_err(db_failure)?;
        let batch = store::active_after(&mut conn, after, BATCH)
            .await
            .map_err(db_failure)?;
        let Some(last) = batch.last() else { break };
        after = Some(last.id);
        for me in &batch {
            let candidates = store::duplicate_candidates(&mut conn, me, CANDIDATES_PER_CUSTOMER)
                .await
                .map_err(db_failure)?;
            found.created.insert(me.id, me.create_time);
            for candidate in candidates.into_iter().filter(|c| c.score >= min_score) {
                let other = candidate.row.id;
                found.created.insert(other, candidate.row.create_time);
                let pair = found
                    .pairs
                    .entry((me.id.min(other), me.id.max(other)))
                    .or_default();
                // Each pair is seen from both sides; keep the better-supported view.
                pair.score = pair.score.max(candidate.score);
                pair.reasons.extend(candidate.reasons);
            }
        }
        scanned += batch.len() as i64;
        // Customers created during the scan are scanned too; the total follows.
        total = total.max(scanned);
        ctx.progress("scanning", scanned, Some(total)).await;
    }
    Ok((found, scanned))
}

/// Groups connected pairs: each group oldest customer first, its score the lowest pair score
/// in it, groups most likely first.
fn group(found: Found) -> Vec<pb::DuplicateGroup> {
    let mut parent: HashMap<Uuid, Uuid> = HashMap::new();
    fn root(parent: &mut HashMap<Uuid, Uuid>, id: Uuid) -> Uuid {
        let mut at = id;
        while let Some(&up) = parent.get(&at) {
            if up == at {
                break;
            }
            at = up;
        }
        parent.insert(id, at);
        at
    }
    for &(a, b) in found.pairs.keys() {
        let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
        parent.insert(ra.max(rb), ra.min(rb));
        parent.entry(ra.min(rb)).or_insert(ra.min(rb));
    }
    let mut groups: BTreeMap<Uuid, (BTreeSet<Uuid>, f64, BTreeSet<String>)> = BTreeMap::new();
    for ((a, b), pair) in &found.pairs {
        let r = root(&mut parent, *a);
        let entry = groups
            .entry(r)
            .or_insert_with(|| (BTreeSet::new(), f64::INFINITY, BTreeSet::new()));
        entry.0.extend([*a, *b]);
        entry.1 = entry.1.min(pair.score);
        entry.2.extend(pair.reasons.iter().cloned());
    }
    let mut out: Vec<pb::DuplicateGroup> = groups
        .into_values()
        .map(|(ids, score, reasons)| {
            let mut ids: Vec<Uuid> = ids.into_iter().collect();
            ids.sort_by_key(|id| (found.created.get(id).copied(), *id));
            pb::DuplicateGroup {
                customer_ids: ids.iter().map(Uuid::to_string).collect(),
                score,
                reasons: reasons.into_iter().collect(),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.customer_ids.cmp(&b.customer_ids))
    });
    out
}
