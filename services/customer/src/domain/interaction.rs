//! An interaction to record on a customer's timeline, converted from proto at the edge: every
//! violation collected under its `interaction.` path.

use chrono::{DateTime, Duration, Utc};
use crm_platform::FieldViolations;
use crm_proto::crm::customer::v1 as pb;
use uuid::Uuid;

use super::{Principal, parse_id, timestamp_from_proto};

/// Longest subject, in characters.
const MAX_SUBJECT: usize = 200;
/// Longest body, in characters.
const MAX_BODY: usize = 10_000;
/// Longest duration, in seconds (a day).
const MAX_DURATION_SECONDS: i64 = 86_400;

/// A valid interaction to record: its type is set, its direction never unspecified.
#[derive(Debug, Clone, PartialEq)]
pub struct NewInteraction {
    /// The customer it belongs to.
    pub customer_id: Uuid,
    /// CALL, EMAIL, MEETING or NOTE; never unspecified.
    pub kind: pb::InteractionType,
    /// INBOUND, OUTBOUND or NONE; never unspecified.
    pub direction: pb::InteractionDirection,
    /// Trimmed, 1..=200 characters.
    pub subject: String,
    /// At most 10 000 characters.
    pub body: String,
    /// When it happened: at most a day ahead; now when not given.
    pub occur_time: DateTime<Utc>,
    /// How long it took, 0..=24 hours, in milliseconds.
    pub duration_ms: Option<i64>,
    /// Who owns it: a USER or a TEAM.
    pub owner: Option<Principal>,
}

impl NewInteraction {
    /// The stored name of its type, e.g. `CALL`.
    pub fn kind_name(&self) -> &'static str {
        self.kind
            .as_str_name()
            .trim_start_matches("INTERACTION_TYPE_")
    }

    /// The stored name of its direction, e.g. `INBOUND`.
    pub fn direction_name(&self) -> &'static str {
        self.direction
            .as_str_name()
            .trim_start_matches("INTERACTION_DIRECTION_")
    }
}

/// Validates an interaction message; violations name `interaction.<field>`.
impl TryFrom<&pb::Interaction> for NewInteraction {
    type Error = FieldViolations;

    fn try_from(i: &pb::Interaction) -> Result<Self, FieldViolations> {
        let mut v = FieldViolations::new();
        let customer_id = parse_id("interaction.customer_id", &i.customer_id)
            .map_err(|e| v.extend(e))
            .ok();
        let kind = kind_from_proto(i.r#type, &mut v);
        let direction = direction_from_proto(i.direction, &mut v);
        let subject = i.subject.trim().to_string();
        if subject.is_empty() || subject.chars().count() > MAX_SUBJECT {
            v.add(
                "interaction.subject",
                format!("is required, at most {MAX_SUBJECT} characters"),
            );
        }
        if i.body.chars().count() > MAX_BODY {
            v.add(
                "interaction.body",
                format!("must be at most {MAX_BODY} characters"),
            );
        }
        let interaction = NewInteraction {
            customer_id: customer_id.unwrap_or_default(),
            kind,
            direction,
            subject,
            body: i.body.clone(),
            owner: Principal::owner_from_proto(i.owner.as_ref(), "interaction.owner", &mut v),
            occur_time: occur_time_from_proto(i.occur_time.as_ref(), &mut v),
            duration_ms: duration_from_proto(i.duration.as_ref(), &mut v),
        };
        if v.is_empty() {
            Ok(interaction)
        } else {
            Err(v)
        }
    }
}

fn kind_from_proto(value: i32, v: &mut FieldViolations) -> pb::InteractionType {
    match pb::InteractionType::try_from(value) {
        Ok(kind) if kind != pb::InteractionType::Unspecified => kind,
        _ => {
            v.add("interaction.type", "must be CALL, EMAIL, MEETING or NOTE");
            pb::InteractionType::Unspecified
        }
    }
}

/// Unset means NONE: the server stores and returns a direction always.
fn direction_from_proto(value: i32, v: &mut FieldViolations) -> pb::InteractionDirection {
    match pb::InteractionDirection::try_from(value) {
        Ok(pb::InteractionDirection::Unspecified) => pb::InteractionDirection::None,
        Ok(direction) => direction,
        Err(_) => {
            v.add(
                "interaction.direction",
                "must be INBOUND, OUTBOUND or NONE (unset means NONE)",
            );
            pb::InteractionDirection::None
        }
    }
}

fn occur_time_from_proto(
    ts: Option<&prost_types::Timestamp>,
    v: &mut FieldViolations,
) -> DateTime<Utc> {
    let now = Utc::now();
    let Some(ts) = ts else {
        return now;
    };
    match timestamp_from_proto(ts) {
        Some(t) if t <= now + Duration::days(1) => t,
        _ => {
            v.add(
                "interaction.occur_time",
                "must be a valid time at most 1 day ahead",
            );
            now
        }
    }
}

fn duration_from_proto(d: Option<&prost_types::Duration>, v: &mut FieldViolations) -> Option<i64> {
    let d = d?;
    if (0..=MAX_DURATION_SECONDS).contains(&d.seconds) && d.nanos >= 0 {
        Some(d.seconds * 1000 + d.nanos as i64 / 1_000_000)
    } else {
        v.add("interaction.duration", "must be between 0 and 24 hours");
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_direction_is_recorded_as_none() {
        let message = pb::Interaction {
            customer_id: Uuid::now_v7().to_string(),
            r#type: pb::InteractionType::Call as i32,
            subject: "Intro call".into(),
            ..Default::default()
        };

        let interaction = NewInteraction::try_from(&message).unwrap();

        assert_eq!(interaction.direction_name(), "NONE");
        assert_eq!(interaction.kind_name(), "CALL");
    }

    #[test]
    fn every_bad_field_of_an_interaction_is_reported_at_once() {
        let message = pb::Interaction {
            customer_id: "not-a-uuid".into(),
            direction: 99,
            duration: Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            ..Default::default()
        };

        let violations = NewInteraction::try_from(&message).unwrap_err();

        let mut fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "interaction.customer_id",
                "interaction.direction",
                "interaction.duration",
                "interaction.subject",
                "interaction.type",
            ]
        );
    }
}
