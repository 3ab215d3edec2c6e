//! Consent decisions, validated at the edge.

use chrono::{DateTime, Utc};
use crm_platform::FieldViolations;
use crm_proto::crm::common::v1::Channel;
use crm_proto::crm::customer::v1 as pb;

use super::timestamp_from_proto;

/// A consent decision that passed validation. Enum values are stored by their full names
/// (`CHANNEL_EMAIL`, `CONSENT_STATUS_GRANTED`, `LEGAL_BASIS_CONSENT`).
#[derive(Debug)]
pub struct ValidConsent {
    /// The channel.
    pub channel: &'static str,
    /// Granted or withdrawn.
    pub status: &'static str,
    /// The legal basis.
    pub legal_basis: &'static str,
    /// Where it was captured.
    pub source: String,
    /// When the customer decided.
    pub capture_time: DateTime<Utc>,
}

impl ValidConsent {
    /// The channel's name without its prefix (`EMAIL`), as in the history path
    /// `consents.EMAIL`.
    pub fn channel_path(&self) -> String {
        format!("consents.{}", self.channel.trim_start_matches("CHANNEL_"))
    }
}

/// Validates a consent decision; every bad field is reported under `consent.`.
pub fn validate_consent(consent: Option<&pb::Consent>) -> Result<ValidConsent, FieldViolations> {
    let mut v = FieldViolations::new();
    let Some(c) = consent else {
        return Err(FieldViolations::single("consent", "is required"));
    };
    let channel = match Channel::try_from(c.channel) {
        Ok(ch) if ch != Channel::Unspecified => ch.as_str_name(),
        _ => {
            v.add(
                "consent.channel",
                "must be EMAIL, SMS, PHONE, PUSH, DIRECT_MAIL or IN_APP",
            );
            ""
        }
    };
    let status = match pb::ConsentStatus::try_from(c.status) {
        Ok(s) if s != pb::ConsentStatus::Unspecified => s.as_str_name(),
        _ => {
            v.add("consent.status", "must be GRANTED or WITHDRAWN");
            ""
        }
    };
    let legal_basis = match pb::LegalBasis::try_from(c.legal_basis) {
        Ok(b) if b != pb::LegalBasis::Unspecified => b.as_str_name(),
        _ => {
            v.add(
                "consent.legal_basis",
                "must be set (CONSENT, CONTRACT, LEGAL_OBLIGATION or LEGITIMATE_INTEREST)",
            );
            ""
        }
    };
    let source = c.source.trim().to_string();
    if source.is_empty() || source.chars().count() > 100 {
        v.add("consent.source", "is required, at most 100 characters");
    }
    let now = Utc::now();
    let capture_time = match &c.capture_time {
        None => now,
        Some(ts) => match timestamp_from_proto(ts) {
            Some(t) if t <= now + chrono::Duration::minutes(5) => t,
            Some(_) => {
                v.add("consent.capture_time", "must not be in the future");
                now
            }
            None => {
                v.add("consent.capture_time", "is not a valid timestamp");
                now
            }
        },
    };
    if v.is_empty() {
        Ok(ValidConsent {
            channel,
            status,
            legal_basis,
            source,
            capture_time,
        })
    } else {
        Err(v)
    }
}
