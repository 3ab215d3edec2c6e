//! The writable fields of a customer, and their conversion from proto: every field checked,
//! every violation collected under its `customer.` path, so one reply names them all.

use crm_platform::FieldViolations;
use crm_proto::crm::customer::v1 as pb;

use super::{
    Address, Attributes, ContactKind, ContactPoint, CustomerPatch, LifecycleStage, MAX_ADDRESSES,
    MAX_CONTACT_POINTS, MAX_TAGS, Principal, is_valid_e164, is_valid_email,
};

/// The field path every violation of a customer message starts with.
const FIELD: &str = "customer";

/// The writable fields of a customer, validated. Used for create and, field by field, update.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomerFields {
    /// Required, 1..=200 characters.
    pub display_name: String,
    /// Lower-cased primary email.
    pub email: Option<String>,
    /// Given name.
    pub given_name: Option<String>,
    /// Family name.
    pub family_name: Option<String>,
    /// E.164 phone.
    pub phone: Option<String>,
    /// Company.
    pub company_name: Option<String>,
    /// Lifecycle stage; LEAD when not given.
    pub lifecycle_stage: LifecycleStage,
    /// Owner: a USER or a TEAM.
    pub owner: Option<Principal>,
    /// Source.
    pub source: Option<String>,
    /// Normalised tags.
    pub tags: Vec<String>,
    /// Custom attributes.
    pub attributes: Attributes,
    /// Extra contact points.
    pub contact_points: Vec<ContactPoint>,
    /// Addresses.
    pub addresses: Vec<Address>,
}

/// Validates every writable field of a customer message; violations name `customer.<field>`.
impl TryFrom<&pb::Customer> for CustomerFields {
    type Error = FieldViolations;

    fn try_from(c: &pb::Customer) -> Result<Self, FieldViolations> {
        let mut v = FieldViolations::new();
        let fields = CustomerFields::collect(c, &mut v);
        if v.is_empty() { Ok(fields) } else { Err(v) }
    }
}

impl CustomerFields {
    /// Converts every field of `c`, adding each violation to `v` rather than stopping at the
    /// first: an update keeps only the violations of the paths its mask names.
    pub(super) fn collect(c: &pb::Customer, v: &mut FieldViolations) -> Self {
        let display_name = c.display_name.trim().to_string();
        if display_name.is_empty() {
            v.add(path("display_name"), "is required");
        }
        check_len(v, &path("display_name"), &display_name, 200);
        for (name, value, max) in [
            ("given_name", &c.given_name, 100),
            ("family_name", &c.family_name, 100),
            ("company_name", &c.company_name, 200),
            ("source", &c.source, 100),
        ] {
            check_len(v, &path(name), value, max);
        }
        CustomerFields {
            display_name,
            email: email_from_proto(&c.email, v),
            given_name: non_empty(&c.given_name),
            family_name: non_empty(&c.family_name),
            phone: phone_from_proto(&c.phone, v),
            company_name: non_empty(&c.company_name),
            lifecycle_stage: lifecycle_stage_from_proto(c.lifecycle_stage, v),
            owner: Principal::owner_from_proto(c.owner.as_ref(), &path("owner"), v),
            source: non_empty(&c.source),
            tags: tags_from_proto(&c.tags, v),
            attributes: Attributes::from_proto(&c.attributes, &path("attributes"), v),
            contact_points: contact_points_from_proto(&c.contact_points, v),
            addresses: addresses_from_proto(&c.addresses, v),
        }
    }

    /// Applies the fields named in `paths` from `incoming` onto `self` (the stored customer),
    /// validating only those; `attributes.<key>` sets or removes one attribute.
    pub fn apply_mask(
        &mut self,
        incoming: &pb::Customer,
        paths: &[String],
    ) -> Result<(), FieldViolations> {
        CustomerPatch::new(incoming, paths)?.apply(self)
    }
}

fn path(name: &str) -> String {
    format!("{FIELD}.{name}")
}

fn non_empty(s: &str) -> Option<String> {
    let trimmed = s.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

fn check_len(v: &mut FieldViolations, field: &str, value: &str, max: usize) {
    if value.chars().count() > max {
        v.add(field, format!("must be at most {max} characters"));
    }
}

fn email_from_proto(email: &str, v: &mut FieldViolations) -> Option<String> {
    let email = non_empty(email).map(|e| e.to_lowercase());
    if let Some(email) = &email
        && !is_valid_email(email)
    {
        v.add(path("email"), "is not a valid email address");
    }
    email
}

fn phone_from_proto(phone: &str, v: &mut FieldViolations) -> Option<String> {
    let phone = non_empty(phone);
    if let Some(phone) = &phone
        && !is_valid_e164(phone)
    {
        v.add(path("phone"), "must be in E.164 form, e.g. +4915112345678");
    }
    phone
}

fn lifecycle_stage_from_proto(value: i32, v: &mut FieldViolations) -> LifecycleStage {
    LifecycleStage::from_proto(value).unwrap_or_else(|| {
        v.add(path("lifecycle_stage"), format!("unknown value {value}"));
        LifecycleStage::Lead
    })
}

fn is_valid_tag(tag: &str) -> bool {
    (1..=50).contains(&tag.len())
        && tag
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Tags trimmed, lower-cased and deduplicated, first occurrence kept.
fn tags_from_proto(raw: &[String], v: &mut FieldViolations) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    for (i, tag) in raw.iter().enumerate() {
        let tag = tag.trim().to_lowercase();
        if !is_valid_tag(&tag) {
            v.add(
                format!("{FIELD}.tags[{i}]"),
                "tags are 1..=50 characters of [a-z0-9_-]",
            );
        } else if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    if tags.len() > MAX_TAGS {
        v.add(path("tags"), format!("at most {MAX_TAGS} tags"));
    }
    tags
}

fn contact_points_from_proto(
    raw: &[pb::ContactPoint],
    v: &mut FieldViolations,
) -> Vec<ContactPoint> {
    if raw.len() > MAX_CONTACT_POINTS {
        v.add(
            path("contact_points"),
            format!("at most {MAX_CONTACT_POINTS}"),
        );
    }
    raw.iter()
        .enumerate()
        .filter_map(|(i, cp)| {
            contact_point_from_proto(&format!("{FIELD}.contact_points[{i}]"), cp, v)
        })
        .collect()
}

/// One contact point, emails lower-cased; `None` when its type is neither EMAIL nor PHONE.
fn contact_point_from_proto(
    field: &str,
    cp: &pb::ContactPoint,
    v: &mut FieldViolations,
) -> Option<ContactPoint> {
    let value = cp.value.trim();
    let (kind, value) = match pb::ContactPointType::try_from(cp.r#type) {
        Ok(pb::ContactPointType::Email) => {
            let value = value.to_lowercase();
            if !is_valid_email(&value) {
                v.add(format!("{field}.value"), "is not a valid email address");
            }
            (ContactKind::Email, value)
        }
        Ok(pb::ContactPointType::Phone) => {
            if !is_valid_e164(value) {
                v.add(format!("{field}.value"), "must be in E.164 form");
            }
            (ContactKind::Phone, value.to_string())
        }
        _ => {
            v.add(format!("{field}.type"), "must be EMAIL or PHONE");
            return None;
        }
    };
    check_len(v, &format!("{field}.label"), &cp.label, 50);
    Some(ContactPoint {
        kind,
        value,
        label: cp.label.clone(),
    })
}

fn addresses_from_proto(raw: &[pb::CustomerAddress], v: &mut FieldViolations) -> Vec<Address> {
    if raw.len() > MAX_ADDRESSES {
        v.add(path("addresses"), format!("at most {MAX_ADDRESSES}"));
    }
    raw.iter()
        .enumerate()
        .map(|(i, a)| address_from_proto(&format!("{FIELD}.addresses[{i}]"), a, v))
        .collect()
}

/// One address, its region code upper-cased.
fn address_from_proto(field: &str, a: &pb::CustomerAddress, v: &mut FieldViolations) -> Address {
    check_len(v, &format!("{field}.label"), &a.label, 50);
    let postal = a.address.clone().unwrap_or_default();
    let region = postal.region_code.trim().to_uppercase();
    if region.len() != 2 || !region.chars().all(|c| c.is_ascii_uppercase()) {
        v.add(
            format!("{field}.address.region_code"),
            "must be a two-letter CLDR region code, e.g. DE",
        );
    }
    if postal.address_lines.len() > 5 {
        v.add(format!("{field}.address.address_lines"), "at most 5 lines");
    }
    for (j, line) in postal.address_lines.iter().enumerate() {
        check_len(v, &format!("{field}.address.address_lines[{j}]"), line, 200);
    }
    Address {
        label: a.label.clone(),
        region_code: region,
        postal_code: postal.postal_code,
        administrative_area: postal.administrative_area,
        locality: postal.locality,
        address_lines: postal.address_lines,
        recipient: postal.recipient,
    }
}
