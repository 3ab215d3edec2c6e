//! Who someone is (`crm.common.v1.Principal`), as this service stores it: a kind name (`USER`,
//! `TEAM`, `AGENT`, `SERVICE`) and an id. Owners are USER or TEAM; authors (audit, consent
//! recorders, mergers, change-event actors) are the caller's token, USER or SERVICE.

use crm_platform::FieldViolations;
use crm_platform::filter::EnumDef;
use crm_proto::crm::common::v1 as common;
use serde_json::Value as Json;

/// Principal kinds as stored and filtered on (the enum's names without `PRINCIPAL_KIND_`).
pub const PRINCIPAL_KINDS: &[&str] = &["USER", "TEAM", "AGENT", "SERVICE"];

/// `PrincipalKind` for filters (`owner.kind = TEAM` or `owner.kind = PRINCIPAL_KIND_TEAM`).
pub static PRINCIPAL_KIND: EnumDef = EnumDef::new("PRINCIPAL_KIND_", PRINCIPAL_KINDS);

/// Longest principal id.
pub const MAX_PRINCIPAL_ID: usize = 200;

/// A principal as stored: kind name and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// One of [`PRINCIPAL_KINDS`].
    pub kind: &'static str,
    /// The id within its kind.
    pub id: String,
}

/// The stored name of a `PrincipalKind` value; `None` for UNSPECIFIED and unknown values.
pub fn kind_name(value: i32) -> Option<&'static str> {
    match common::PrincipalKind::try_from(value).ok()? {
        common::PrincipalKind::Unspecified => None,
        common::PrincipalKind::User => Some("USER"),
        common::PrincipalKind::Team => Some("TEAM"),
        common::PrincipalKind::Agent => Some("AGENT"),
        common::PrincipalKind::Service => Some("SERVICE"),
    }
}

impl Principal {
    /// The caller of a request, as the platform's auth layer describes it (USER or SERVICE).
    pub fn caller(caller: &common::Principal) -> Self {
        Self {
            kind: kind_name(caller.kind).unwrap_or("USER"),
            id: caller.id.clone(),
        }
    }

    /// A stored principal; an unknown kind name reads as USER (rows written before kinds
    /// existed were users).
    pub fn stored(kind: &str, id: &str) -> Self {
        Self {
            kind: PRINCIPAL_KINDS
                .iter()
                .find(|k| **k == kind)
                .copied()
                .unwrap_or("USER"),
            id: id.to_string(),
        }
    }

    /// An owner from proto (customer or interaction): USER or TEAM with a 1..=200 character id.
    /// An absent or all-default message means no owner. Violations are reported under `field`
    /// (`customer.owner`).
    pub fn owner_from_proto(
        owner: Option<&common::Principal>,
        field: &str,
        v: &mut FieldViolations,
    ) -> Option<Self> {
        let owner = owner?;
        let id = owner.id.trim();
        if owner.kind == 0 && id.is_empty() {
            return None;
        }
        let kind = match kind_name(owner.kind) {
            Some(kind @ ("USER" | "TEAM")) => kind,
            _ => {
                v.add(format!("{field}.kind"), "an owner must be a USER or a TEAM");
                "USER"
            }
        };
        if id.is_empty() || id.chars().count() > MAX_PRINCIPAL_ID {
            v.add(
                format!("{field}.id"),
                format!("is required, 1..={MAX_PRINCIPAL_ID} characters"),
            );
        }
        Some(Self {
            kind,
            id: id.to_string(),
        })
    }

    /// The proto message.
    pub fn to_proto(&self) -> common::Principal {
        common::Principal {
            kind: common::PrincipalKind::from_str_name(&format!("PRINCIPAL_KIND_{}", self.kind))
                .unwrap_or_default() as i32,
            id: self.id.clone(),
        }
    }

    /// The proto3 JSON form (`{"kind": "PRINCIPAL_KIND_USER", "id": "alice"}`).
    pub fn to_json(&self) -> Json {
        serde_json::json!({
            "kind": format!("PRINCIPAL_KIND_{}", self.kind),
            "id": self.id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(kind: common::PrincipalKind, id: &str) -> common::Principal {
        common::Principal {
            kind: kind as i32,
            id: id.into(),
        }
    }

    fn check(o: Option<&common::Principal>) -> (Option<Principal>, Vec<String>) {
        let mut v = FieldViolations::new();
        let parsed = Principal::owner_from_proto(o, "customer.owner", &mut v);
        (parsed, v.iter().map(|v| v.field.clone()).collect())
    }

    #[test]
    fn users_and_teams_can_own_and_nobody_else() {
        use common::PrincipalKind::*;
        for (kind, violated) in [
            (User, vec![]),
            (Team, vec![]),
            (Agent, vec!["customer.owner.kind".to_string()]),
            (Service, vec!["customer.owner.kind".to_string()]),
            (Unspecified, vec!["customer.owner.kind".to_string()]),
        ] {
            assert_eq!(check(Some(&owner(kind, "alice"))).1, violated, "{kind:?}");
        }
    }

    #[test]
    fn an_owner_id_is_one_to_two_hundred_characters() {
        let longest = "é".repeat(200);
        let too_long = "é".repeat(201);
        let user = common::PrincipalKind::User;

        assert!(check(Some(&owner(user, &longest))).1.is_empty());
        assert_eq!(
            check(Some(&owner(user, &too_long))).1,
            ["customer.owner.id"]
        );
        assert_eq!(check(Some(&owner(user, ""))).1, ["customer.owner.id"]);
    }

    #[test]
    fn an_absent_or_empty_owner_is_no_owner() {
        assert_eq!(check(None), (None, vec![]));
        assert_eq!(check(Some(&common::Principal::default())), (None, vec![]));
    }

    #[test]
    fn a_principal_survives_storage_and_unknown_stored_kinds_read_as_users() {
        let team = owner(common::PrincipalKind::Team, "emea-sales");
        let (parsed, _) = check(Some(&team));

        let stored = parsed.unwrap();

        assert_eq!(Principal::stored(stored.kind, &stored.id).to_proto(), team);
        assert_eq!(Principal::stored("", "old-subject").kind, "USER");
    }
}
