//! Where a customer is in its life, as stored in `customers.state`.

use crm_proto::crm::customer::v1 as pb;

/// A customer's state. Stored as its name in a `text` column (the migration's CHECK lists the
/// same names), so a value read back is always one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CustomerState {
    /// Visible, writable, counted in lists.
    Active,
    /// Soft-deleted: can be undeleted.
    Deleted,
    /// Merged into another customer (`merged_into_id`).
    Merged,
    /// Personal data erased; only a tombstone is left.
    Erased,
}

impl CustomerState {
    /// Every state, in the order the proto enum declares them.
    pub const ALL: [CustomerState; 4] = [Self::Active, Self::Deleted, Self::Merged, Self::Erased];

    /// The stored name, e.g. `ACTIVE`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Deleted => "DELETED",
            Self::Merged => "MERGED",
            Self::Erased => "ERASED",
        }
    }
}

impl std::fmt::Display for CustomerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl From<CustomerState> for pb::CustomerState {
    fn from(state: CustomerState) -> Self {
        match state {
            CustomerState::Active => pb::CustomerState::Active,
            CustomerState::Deleted => pb::CustomerState::Deleted,
            CustomerState::Merged => pb::CustomerState::Merged,
            CustomerState::Erased => pb::CustomerState::Erased,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stored_name_is_the_proto_name_without_its_prefix() {
        for state in CustomerState::ALL {
            let proto = pb::CustomerState::from(state).as_str_name();

            assert_eq!(proto.strip_prefix("CUSTOMER_STATE_"), Some(state.name()));
        }
    }
}
