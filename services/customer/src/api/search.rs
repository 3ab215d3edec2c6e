//! SearchCustomers and FindDuplicateCustomers: finding customers by what they look like.

use crm_platform::ApiError;
use crm_platform::db::bind_filter_params;
use crm_platform::filter;
use crm_platform::page_token::query_fingerprint;
use crm_platform::paging::page_size;
use crm_proto::crm::customer::v1 as pb;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{CUSTOMER_FILTER, CustomerApi};
use crate::domain::parse_id;
use crate::error::{Error, Result};
use crate::store::{self, CUSTOMER_COLUMNS, CustomerRow};

/// How a search matches: by words (full text), or by similarity when no word matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum SearchMode {
    FullText,
    Similar,
}

/// Keyset position of a SearchCustomers page.
#[derive(Serialize, Deserialize)]
struct SearchCursor {
    mode: SearchMode,
    score: f64,
    id: Uuid,
}

#[derive(sqlx::FromRow)]
struct SearchHit {
    #[sqlx(flatten)]
    row: CustomerRow,
    score: f64,
}

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
        let limit = page_size(req.page_size, 20, 100)?;
        let sql_filter = self.parse_filter(&req.filter, &CUSTOMER_FILTER, 5)?;
        let fingerprint = query_fingerprint(&[&query, &req.filter]);
        let cursor: Option<SearchCursor> = self.decode_token(&req.page_token, fingerprint)?;
        // Full-text matches (word prefixes, ranked) are the main path and use the GIN index on
        // the tsvector. Only when nothing matches at all does the search fall back to trigram
        // similarity, which tolerates typos but costs far more per candidate row.
        let mut mode = cursor.as_ref().map_or(SearchMode::FullText, |c| c.mode);
        let mut hits = self
            .search_page(mode, &tsquery, &query, &sql_filter, cursor.as_ref(), limit)
            .await?;
        if hits.is_empty() && cursor.is_none() && mode == SearchMode::FullText {
            mode = SearchMode::Similar;
            hits = self
                .search_page(mode, &tsquery, &query, &sql_filter, None, limit)
                .await?;
        }
        let next_page_token = if hits.len() > limit as usize {
            hits.truncate(limit as usize);
            let last = hits.last().expect("a full page has a last row");
            self.page_tokens.encode(
                fingerprint,
                &SearchCursor {
                    mode,
                    score: last.score,
                    id: last.row.id,
                },
            )
        } else {
            String::new()
        };
        let rows: Vec<CustomerRow> = hits.iter().map(|h| h.row.clone()).collect();
        let mut conn = self.db.acquire().await?;
        let customers = store::to_protos(&mut conn, &rows).await?;
        Ok(pb::SearchCustomersResponse {
            results: customers
                .into_iter()
                .zip(hits)
                .map(|(customer, hit)| pb::SearchCustomersResult {
                    customer: Some(customer),
                    score: hit.score,
                })
                .collect(),
            next_page_token,
        })
    }

    /// One page of search hits (one more than `limit`, to know whether another page follows).
    async fn search_page(
        &self,
        mode: SearchMode,
        tsquery: &str,
        query: &str,
        sql_filter: &filter::SqlFilter,
        cursor: Option<&SearchCursor>,
        limit: u32,
    ) -> Result<Vec<SearchHit>> {
        let (score, matches) = match mode {
            SearchMode::FullText => (
                "ts_rank_cd(c.search_vector, to_tsquery('simple', $1))",
                "c.search_vector @@ to_tsquery('simple', $1)",
            ),
            SearchMode::Similar => ("word_similarity($2, c.search_text)", "$2 <% c.search_text"),
        };
        let sql = format!(
            "SELECT * FROM ( \
               SELECT {CUSTOMER_COLUMNS}, ({score})::float8 AS score \
               FROM customer.customers c \
               WHERE c.state = 'ACTIVE' AND {matches} AND {} \
             ) c WHERE ($3::float8 IS NULL OR (c.score, c.id) < ($3, $4)) \
             ORDER BY c.score DESC, c.id DESC LIMIT ${}",
            sql_filter.sql,
            sql_filter.params.len() + 5
        );
        let query_builder = sqlx::query_as::<_, SearchHit>(&sql)
            .bind(tsquery)
            .bind(query)
            .bind(cursor.map(|c| c.score))
            .bind(cursor.map(|c| c.id).unwrap_or_default());
        Ok(bind_filter_params(query_builder, &sql_filter.params)
            .bind(limit as i64 + 1)
            .fetch_all(&self.db)
            .await?)
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
        if me.state != "ACTIVE" {
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
    if requested < 0 {
        return Err(ApiError::invalid("max_results", "must not be negative").into());
    }
    Ok(page_size(requested, 10, 50)?)
}
