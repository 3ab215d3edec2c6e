//! SearchCustomers and FindDuplicateCustomers: finding customers by what they look like.

use crm_platform::ApiError;
use crm_platform::list::ListRequest;
use crm_proto::crm::customer::v1 as pb;

use super::CustomerApi;
use crate::domain::{CustomerState, parse_id};
use crate::error::{Error, Result};
use crate::store::{self, CustomerRow, SearchMode};

impl CustomerApi {
    pub(super) async fn search(
        &self,
        req: pb::SearchCustomersRequest,
    ) -> Result<pb::SearchCustomersResponse> {
        let query = req.query.trim().to_lowercase();
        if query.is_empty() || query.chars().count() > 200 {
            return Err(ApiError::invalid("query", "must be 1..=200 characters").into());
        }
        let words: Vec<String> = query
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .take(10)
            .map(|w| format!("{w}:*"))
            .collect();
        if words.is_empty() {
            return Err(ApiError::invalid("query", "must contain a letter or digit").into());
        }
        let tsquery = words.join(" & ");
        let list = store::SEARCH.prepare_with_state::<SearchMode>(
            &self.page_tokens,
            &ListRequest::new(req.page_size, &req.page_token)
                .filter(&req.filter)
                .scope(&[&query]),
        )?;
        // One connection for the pages and their consents.
        let mut conn = self.db.acquire().await?;
        // Full-text matches (word prefixes, ranked) are the main path and use the GIN index on
        // the tsvector. Only when nothing matches at all does the search fall back to trigram
        // similarity, which tolerates typos but costs far more per candidate row; later pages
        // stay in the mode of the first.
        let mut mode = list.state().copied().unwrap_or(SearchMode::FullText);
        let mut page = store::search_page(&mut conn, &list, mode, &tsquery, &query).await?;
        if page.rows.is_empty() && list.is_first_page() && mode == SearchMode::FullText {
            mode = SearchMode::Similar;
            page = store::search_page(&mut conn, &list, mode, &tsquery, &query).await?;
        }
        let rows: Vec<CustomerRow> = page.rows.iter().map(|hit| hit.row.clone()).collect();
        let customers = store::to_protos(&mut conn, &rows).await?;
        Ok(pb::SearchCustomersResponse {
            results: customers
                .into_iter()
                .zip(page.rows)
                .map(|(customer, hit)| pb::SearchCustomersResult {
                    customer: Some(customer),
                    score: hit.score,
                })
                .collect(),
            next_page_token: page.next_page_token,
        })
    }

    /// The best `max_results` candidates (default 10, at most 50): a ranked top list, not pages.
    pub(super) async fn find_duplicates(
        &self,
        req: pb::FindDuplicateCustomersRequest,
    ) -> Result<pb::FindDuplicateCustomersResponse> {
        let id = parse_id("customer_id", &req.customer_id)?;
        let limit = max_results(req.max_results)?;
        let mut conn = self.db.acquire().await?;
        let me = self.ensure_exists(&mut conn, id).await?;
        if me.state != CustomerState::Active {
            return Err(Error::NotActive {
                id,
                state: me.state,
            });
        }
        let candidates = store::duplicate_candidates(&mut conn, &me, limit as i64).await?;
        let rows: Vec<CustomerRow> = candidates.iter().map(|c| c.row.clone()).collect();
        let customers = store::to_protos(&mut conn, &rows).await?;
        Ok(pb::FindDuplicateCustomersResponse {
            candidates: customers
                .into_iter()
                .zip(candidates)
                .map(|(customer, c)| pb::DuplicateCandidate {
                    customer: Some(customer),
                    score: c.score,
                    reasons: c.reasons,
                })
                .collect(),
        })
    }
}

/// FindDuplicateCustomers' `max_results`: 0 means 10, above 50 is clamped, negative is invalid.
fn max_results(requested: i32) -> Result<u32> {
    match u32::try_from(requested) {
        Ok(0) => Ok(10),
        Ok(n) => Ok(n.min(50)),
        Err(_) => Err(ApiError::invalid("max_results", "must not be negative").into()),
    }
}
