//! The benchmark's ceiling: a bare tonic server implementing `crm.customer.v1.CustomerService`
//! with no middleware, no database and no cache. `GetCustomer` answers every call with the same
//! realistic, pre-built customer; every other method is `UNIMPLEMENTED`.
//!
//! `bench/run.sh` drives it with the same h2load settings as the real server, so the ratio
//! "real cache-hit GetCustomer / ceiling GetCustomer" shows how much the real stack (auth,
//! metrics, tracing, cache lookups, mapping) costs on top of HTTP/2 + protobuf.
//!
//! Usage: `cargo run --release -p crm --example bench_ceiling [LISTEN_ADDR]`
//! (default `127.0.0.1:50099`).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crm_proto::crm::common::v1::{AuditInfo, PostalAddress, Principal, PrincipalKind};
use crm_proto::crm::customer::v1::attribute_value::Kind;
use crm_proto::crm::customer::v1::customer_service_server::{
    CustomerService, CustomerServiceServer,
};
use crm_proto::crm::customer::v1::{
    AttributeValue, BatchGetCustomersRequest, BatchGetCustomersResponse, CreateCustomerRequest,
    CreateCustomerResponse, CreateInteractionRequest, CreateInteractionResponse, Customer,
    CustomerAddress, CustomerState, DeleteCustomerRequest, DeleteCustomerResponse,
    EraseCustomerRequest, EraseServiceCustomerDataRequest, EraseServiceCustomerDataResponse,
    ExportCustomerDataRequest, ExportCustomersRequest, ExportCustomersResponse,
    ExportServiceCustomerDataRequest, ExportServiceCustomerDataResponse,
    FindDuplicateCustomersRequest, FindDuplicateCustomersResponse, GetCustomerRequest,
    GetCustomerResponse, ImportCustomersRequest, ImportCustomersResponse, LifecycleStage,
    ListConsentHistoryRequest, ListConsentHistoryResponse, ListCustomerFieldChangesRequest,
    ListCustomerFieldChangesResponse, ListCustomersRequest, ListCustomersResponse,
    ListInteractionsRequest, ListInteractionsResponse, ListMergeRecordsRequest,
    ListMergeRecordsResponse, MergeCustomersRequest, MergeCustomersResponse, RecordConsentRequest,
    RecordConsentResponse, ScanDuplicateCustomersRequest, SearchCustomersRequest,
    SearchCustomersResponse, UndeleteCustomerRequest, UndeleteCustomerResponse,
    UpdateCustomerRequest, UpdateCustomerResponse, WatchCustomerChangesRequest,
    WatchCustomerChangesResponse,
};
use crm_proto::google::longrunning::Operation;
use prost::Message as _;
use prost_types::Timestamp;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

const DEFAULT_ADDR: &str = "127.0.0.1:50099";

/// A customer shaped like one `crm seed` writes: names, contact data, company, stage, owner,
/// tags, three attributes, one billing address, audit data.
fn fixed_customer() -> Customer {
    let str_attr = |s: &str| AttributeValue {
        kind: Some(Kind::StringValue(s.to_string())),
    };
    let int_attr = |i: i64| AttributeValue {
        kind: Some(Kind::IntValue(i)),
    };
    let created = Timestamp {
        seconds: 1_767_225_600,
        nanos: 123_456_000,
    };
    let updated = Timestamp {
        seconds: 1_767_312_000,
        nanos: 654_321_000,
    };
    Customer {
        id: "01936f3e-8c4a-7b21-9d5e-3f2a1b0c9d8e".into(),
        etag: "\"3\"".into(),
        display_name: "Ada Lovelace".into(),
        email: "ada.lovelace.4711@example.com".into(),
        given_name: "Ada".into(),
        family_name: "Lovelace".into(),
        phone: "+4915100004711".into(),
        company_name: "Acme GmbH".into(),
        lifecycle_stage: LifecycleStage::Customer as i32,
        owner: Some(Principal {
            kind: PrincipalKind::User as i32,
            id: "rep-7".into(),
        }),
        tags: vec!["vip".into(), "newsletter".into()],
        attributes: BTreeMap::from([
            ("plan".to_string(), str_attr("enterprise")),
            ("seats".to_string(), int_attr(250)),
            ("nps".to_string(), int_attr(42)),
        ]),
        contact_points: Vec::new(),
        addresses: vec![CustomerAddress {
            label: "billing".into(),
            address: Some(PostalAddress {
                region_code: "DE".into(),
                postal_code: "10115".into(),
                administrative_area: String::new(),
                locality: "Berlin".into(),
                address_lines: vec!["42 Main Street".into()],
                recipient: String::new(),
            }),
        }],
        consents: Vec::new(),
        source: "seed".into(),
        state: CustomerState::Active as i32,
        delete_time: None,
        merged_into_id: String::new(),
        audit: Some(AuditInfo {
            create_time: Some(created),
            update_time: Some(updated),
            creator: Some(seeder()),
            updater: Some(seeder()),
        }),
    }
}

fn seeder() -> Principal {
    Principal {
        kind: PrincipalKind::Service as i32,
        id: "seed".into(),
    }
}

struct Ceiling {
    response: GetCustomerResponse,
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented(
        "the benchmark ceiling implements GetCustomer only",
    ))
}

#[tonic::async_trait]
impl CustomerService for Ceiling {
    async fn create_customer(
        &self,
        _request: Request<CreateCustomerRequest>,
    ) -> Result<Response<CreateCustomerResponse>, Status> {
        unimplemented()
    }

    async fn get_customer(
        &self,
        _request: Request<GetCustomerRequest>,
    ) -> Result<Response<GetCustomerResponse>, Status> {
        Ok(Response::new(self.response.clone()))
    }

    async fn batch_get_customers(
        &self,
        _request: Request<BatchGetCustomersRequest>,
    ) -> Result<Response<BatchGetCustomersResponse>, Status> {
        unimplemented()
    }

    async fn list_customers(
        &self,
        _request: Request<ListCustomersRequest>,
    ) -> Result<Response<ListCustomersResponse>, Status> {
        unimplemented()
    }

    async fn update_customer(
        &self,
        _request: Request<UpdateCustomerRequest>,
    ) -> Result<Response<UpdateCustomerResponse>, Status> {
        unimplemented()
    }

    async fn delete_customer(
        &self,
        _request: Request<DeleteCustomerRequest>,
    ) -> Result<Response<DeleteCustomerResponse>, Status> {
        unimplemented()
    }

    async fn undelete_customer(
        &self,
        _request: Request<UndeleteCustomerRequest>,
    ) -> Result<Response<UndeleteCustomerResponse>, Status> {
        unimplemented()
    }

    async fn search_customers(
        &self,
        _request: Request<SearchCustomersRequest>,
    ) -> Result<Response<SearchCustomersResponse>, Status> {
        unimplemented()
    }

    async fn find_duplicate_customers(
        &self,
        _request: Request<FindDuplicateCustomersRequest>,
    ) -> Result<Response<FindDuplicateCustomersResponse>, Status> {
        unimplemented()
    }

    async fn merge_customers(
        &self,
        _request: Request<MergeCustomersRequest>,
    ) -> Result<Response<MergeCustomersResponse>, Status> {
        unimplemented()
    }

    async fn list_merge_records(
        &self,
        _request: Request<ListMergeRecordsRequest>,
    ) -> Result<Response<ListMergeRecordsResponse>, Status> {
        unimplemented()
    }

    async fn erase_customer(
        &self,
        _request: Request<EraseCustomerRequest>,
    ) -> Result<Response<Operation>, Status> {
        unimplemented()
    }

    async fn export_customer_data(
        &self,
        _request: Request<ExportCustomerDataRequest>,
    ) -> Result<Response<Operation>, Status> {
        unimplemented()
    }

    async fn erase_service_customer_data(
        &self,
        _request: Request<EraseServiceCustomerDataRequest>,
    ) -> Result<Response<EraseServiceCustomerDataResponse>, Status> {
        unimplemented()
    }

    async fn export_service_customer_data(
        &self,
        _request: Request<ExportServiceCustomerDataRequest>,
    ) -> Result<Response<ExportServiceCustomerDataResponse>, Status> {
        unimplemented()
    }

    async fn list_customer_field_changes(
        &self,
        _request: Request<ListCustomerFieldChangesRequest>,
    ) -> Result<Response<ListCustomerFieldChangesResponse>, Status> {
        unimplemented()
    }

    async fn scan_duplicate_customers(
        &self,
        _request: Request<ScanDuplicateCustomersRequest>,
    ) -> Result<Response<Operation>, Status> {
        unimplemented()
    }

    async fn record_consent(
        &self,
        _request: Request<RecordConsentRequest>,
    ) -> Result<Response<RecordConsentResponse>, Status> {
        unimplemented()
    }

    async fn list_consent_history(
        &self,
        _request: Request<ListConsentHistoryRequest>,
    ) -> Result<Response<ListConsentHistoryResponse>, Status> {
        unimplemented()
    }

    async fn create_interaction(
        &self,
        _request: Request<CreateInteractionRequest>,
    ) -> Result<Response<CreateInteractionResponse>, Status> {
        unimplemented()
    }

    async fn list_interactions(
        &self,
        _request: Request<ListInteractionsRequest>,
    ) -> Result<Response<ListInteractionsResponse>, Status> {
        unimplemented()
    }

    type ImportCustomersStream = BoxStream<ImportCustomersResponse>;

    async fn import_customers(
        &self,
        _request: Request<Streaming<ImportCustomersRequest>>,
    ) -> Result<Response<Self::ImportCustomersStream>, Status> {
        unimplemented()
    }

    type ExportCustomersStream = BoxStream<ExportCustomersResponse>;

    async fn export_customers(
        &self,
        _request: Request<ExportCustomersRequest>,
    ) -> Result<Response<Self::ExportCustomersStream>, Status> {
        unimplemented()
    }

    type WatchCustomerChangesStream = BoxStream<WatchCustomerChangesResponse>;

    async fn watch_customer_changes(
        &self,
        _request: Request<WatchCustomerChangesRequest>,
    ) -> Result<Response<Self::WatchCustomerChangesStream>, Status> {
        unimplemented()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_ADDR.to_string())
        .parse()?;
    let response = GetCustomerResponse {
        customer: Some(fixed_customer()),
    };
    println!(
        "bench_ceiling: GetCustomerResponse is {} bytes encoded; listening on {addr}",
        response.encoded_len()
    );
    tonic::transport::Server::builder()
        .add_service(CustomerServiceServer::new(Ceiling { response }))
        .serve_with_shutdown(addr, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
