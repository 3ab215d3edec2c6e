//! Test harness of the customer service: the platform's test kit (`crm_platform::testing`)
//! serving the customer module, a customer client and customer test data. Each test gets its
//! own PostgreSQL database (dropped after) and a real server on a random port, talking to the
//! real Redis; without a reachable PostgreSQL or Redis the tests fail loudly instead of
//! skipping.

use std::net::SocketAddr;
use std::time::Duration;

use crm_platform::config::Config;
use crm_platform::testing::{self, BearerAuth};
use crm_proto::crm::common::v1 as common;
use crm_proto::crm::customer::v1 as pb;
use crm_proto::crm::customer::v1::customer_service_client::CustomerServiceClient;
use tonic::transport::Channel;
use uuid::Uuid;

pub use crm_platform::testing::{
    JWT_SECRET, Outage, assert_error, assert_invalid, config, error_reason, fresh_database,
    postgres_addr, principal, redis_addr, redis_url, test_user, via, violated_fields, within,
};
// Part of the harness tests are written against, whether or not a test uses them today.
#[allow(unused_imports)]
pub use crm_platform::testing::{admin_url, eventually, wait_serving};

/// The longest a test waits for any one answer from a server before failing.
pub const CALL_TIMEOUT: Duration = testing::WAIT;

/// Every scope of the customer service.
const ALL_SCOPES: &[&str] = &["customer.read", "customer.write", "customer.gdpr"];

/// A running customer service (the kit's [`testing::TestApp`], whose fields and methods it
/// derefs to) with customer clients.
pub struct TestApp(pub testing::TestApp);

impl std::ops::Deref for TestApp {
    type Target = testing::TestApp;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for TestApp {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl TestApp {
    /// A client with a token granting every customer scope.
    pub async fn client(&self) -> Client {
        self.client_with_scopes(ALL_SCOPES).await
    }

    /// A client with a token granting `scopes`.
    pub async fn client_with_scopes(&self, scopes: &[&str]) -> Client {
        self.client_with_token(Some(testing::user_token(scopes)))
            .await
    }

    /// A client with every customer scope and a service's token (`principal_kind: "service"`)
    /// for `subject`.
    pub async fn service_client(&self, subject: &str) -> Client {
        self.client_with_token(Some(testing::service_token(subject, ALL_SCOPES)))
            .await
    }

    /// A client that sends no token.
    pub async fn anonymous_client(&self) -> Client {
        self.client_with_token(None).await
    }

    /// A client that sends `token` (as is) on every call made through `Client::request`.
    pub async fn client_with_token(&self, token: Option<String>) -> Client {
        Client {
            inner: CustomerServiceClient::new(self.channel().await),
            auth: BearerAuth::new(token),
        }
    }
}

/// Starts the customer service with `config` on a random port (its database migrated first).
pub async fn spawn_with(config: Config) -> TestApp {
    TestApp(testing::TestApp::spawn_with(config, &[&crm_customer::module]).await)
}

/// Starts the customer service on a fresh database and the real Redis.
pub async fn spawn_app() -> TestApp {
    TestApp(testing::TestApp::spawn(&[&crm_customer::module]).await)
}

/// Fails the test unless the Redis at `url` answers.
#[allow(dead_code)] // part of the harness tests are written against
pub async fn assert_redis_reachable(url: &str) {
    testing::redis_connection_at(url).await;
}

/// The customer service's health status at `addr`.
pub async fn health_of(addr: SocketAddr) -> i32 {
    testing::health_of(addr, crm_customer::GRPC_SERVICE).await
}

/// A customer client that adds the bearer token to every call made through
/// [`Client::request`].
#[derive(Clone)]
pub struct Client {
    pub inner: CustomerServiceClient<Channel>,
    auth: BearerAuth,
}

impl Client {
    /// `message` as a request carrying the client's token.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        self.auth.request(message)
    }

    pub async fn create(&self, customer: pb::Customer) -> Result<pb::Customer, tonic::Status> {
        let request = self.request(pb::CreateCustomerRequest {
            customer: Some(customer),
            request_id: String::new(),
        });
        Ok(self
            .inner
            .clone()
            .create_customer(request)
            .await?
            .into_inner()
            .customer
            .unwrap())
    }

    pub async fn get(&self, id: &str) -> Result<pb::Customer, tonic::Status> {
        let request = self.request(pb::GetCustomerRequest { id: id.into() });
        Ok(self
            .inner
            .clone()
            .get_customer(request)
            .await?
            .into_inner()
            .customer
            .unwrap())
    }

    pub async fn list(
        &self,
        req: pb::ListCustomersRequest,
    ) -> Result<pb::ListCustomersResponse, tonic::Status> {
        let request = self.request(req);
        Ok(self
            .inner
            .clone()
            .list_customers(request)
            .await?
            .into_inner())
    }

    pub async fn update(
        &self,
        customer: pb::Customer,
        paths: &[&str],
    ) -> Result<pb::Customer, tonic::Status> {
        let request = self.request(pb::UpdateCustomerRequest {
            customer: Some(customer),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        });
        Ok(self
            .inner
            .clone()
            .update_customer(request)
            .await?
            .into_inner()
            .customer
            .unwrap())
    }
}

impl Client {
    pub async fn delete(&self, id: &str, etag: &str) -> Result<pb::Customer, tonic::Status> {
        let request = self.request(pb::DeleteCustomerRequest {
            id: id.into(),
            etag: etag.into(),
        });
        let response = self.inner.clone().delete_customer(request).await?;
        Ok(response.into_inner().customer.unwrap())
    }

    pub async fn undelete(&self, id: &str, etag: &str) -> Result<pb::Customer, tonic::Status> {
        let request = self.request(pb::UndeleteCustomerRequest {
            id: id.into(),
            etag: etag.into(),
        });
        let response = self.inner.clone().undelete_customer(request).await?;
        Ok(response.into_inner().customer.unwrap())
    }

    /// EraseServiceCustomerData (this service's erasure); the tombstone.
    pub async fn erase(&self, id: &str, reason: &str) -> Result<pb::Customer, tonic::Status> {
        let request = self.request(pb::EraseServiceCustomerDataRequest {
            id: id.into(),
            reason: reason.into(),
        });
        let response = self
            .inner
            .clone()
            .erase_service_customer_data(request)
            .await?;
        Ok(response.into_inner().customer.unwrap())
    }

    /// One page of a customer's field history.
    pub async fn field_changes(
        &self,
        req: pb::ListCustomerFieldChangesRequest,
    ) -> Result<pb::ListCustomerFieldChangesResponse, tonic::Status> {
        let request = self.request(req);
        let response = self
            .inner
            .clone()
            .list_customer_field_changes(request)
            .await?;
        Ok(response.into_inner())
    }

    /// One page of merge records.
    pub async fn merge_records(
        &self,
        req: pb::ListMergeRecordsRequest,
    ) -> Result<pb::ListMergeRecordsResponse, tonic::Status> {
        let request = self.request(req);
        let response = self.inner.clone().list_merge_records(request).await?;
        Ok(response.into_inner())
    }

    pub async fn merge(
        &self,
        survivor_id: &str,
        duplicate_ids: &[&str],
        request_id: &str,
    ) -> Result<pb::MergeCustomersResponse, tonic::Status> {
        let request = self.request(pb::MergeCustomersRequest {
            survivor_id: survivor_id.into(),
            duplicate_ids: duplicate_ids.iter().map(|id| id.to_string()).collect(),
            request_id: request_id.into(),
        });
        Ok(self
            .inner
            .clone()
            .merge_customers(request)
            .await?
            .into_inner())
    }
}

/// A valid customer with a unique email.
pub fn ada() -> pb::Customer {
    pb::Customer {
        display_name: "Ada Lovelace".into(),
        email: format!("ada.{}@example.com", Uuid::now_v7().simple()),
        phone: "+4915112345678".into(),
        tags: vec!["vip".into()],
        ..Default::default()
    }
}

/// A consent decision on `channel` with a legal basis and source, as RecordConsent requires.
pub fn consent(channel: common::Channel, status: pb::ConsentStatus) -> pb::Consent {
    pb::Consent {
        channel: channel as i32,
        status: status as i32,
        legal_basis: pb::LegalBasis::Consent as i32,
        source: "checkout-form".into(),
        ..Default::default()
    }
}
