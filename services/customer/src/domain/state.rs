//! Where a customer is in its life: its state (`customers.state`) and its lifecycle stage
//! (`customers.lifecycle_stage`), both stored by name.

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

/// A customer's lifecycle stage. Stored as its name in a `text` column; only this service
/// writes it, always through this type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LifecycleStage {
    /// Receives news, not yet a lead.
    Subscriber,
    /// A possible customer; the stage when none is given.
    #[default]
    Lead,
    /// In a sales conversation.
    Opportunity,
    /// Buys.
    Customer,
    /// Bought, no longer does.
    Churned,
}

impl LifecycleStage {
    /// Every stage, in the order the proto enum declares them.
    pub const ALL: [LifecycleStage; 5] = [
        Self::Subscriber,
        Self::Lead,
        Self::Opportunity,
        Self::Customer,
        Self::Churned,
    ];

    /// The stored name, e.g. `LEAD`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Subscriber => "SUBSCRIBER",
            Self::Lead => "LEAD",
            Self::Opportunity => "OPPORTUNITY",
            Self::Customer => "CUSTOMER",
            Self::Churned => "CHURNED",
        }
    }

    /// The stage a proto value asks for: unspecified means LEAD; `None` for a number the
    /// proto enum does not declare.
    pub fn from_proto(value: i32) -> Option<Self> {
        Some(match pb::LifecycleStage::try_from(value).ok()? {
            pb::LifecycleStage::Unspecified | pb::LifecycleStage::Lead => Self::Lead,
            pb::LifecycleStage::Subscriber => Self::Subscriber,
            pb::LifecycleStage::Opportunity => Self::Opportunity,
            pb::LifecycleStage::Customer => Self::Customer,
            pb::LifecycleStage::Churned => Self::Churned,
        })
    }
}

impl From<LifecycleStage> for pb::LifecycleStage {
    fn from(stage: LifecycleStage) -> Self {
        match stage {
            LifecycleStage::Subscriber => pb::LifecycleStage::Subscriber,
            LifecycleStage::Lead => pb::LifecycleStage::Lead,
            LifecycleStage::Opportunity => pb::LifecycleStage::Opportunity,
            LifecycleStage::Customer => pb::LifecycleStage::Customer,
            LifecycleStage::Churned => pb::LifecycleStage::Churned,
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

    #[test]
    fn every_stored_stage_is_the_proto_name_without_its_prefix() {
        for stage in LifecycleStage::ALL {
            let proto = pb::LifecycleStage::from(stage);

            assert_eq!(
                proto.as_str_name().strip_prefix("LIFECYCLE_STAGE_"),
                Some(stage.name())
            );
            assert_eq!(LifecycleStage::from_proto(proto as i32), Some(stage));
        }
        assert_eq!(LifecycleStage::from_proto(0), Some(LifecycleStage::Lead));
        assert_eq!(LifecycleStage::from_proto(99), None);
    }
}
