//! A minimal service module for serving tests: `google.longrunning.Operations`, whose
//! `WaitOperation` holds the call until the test opens a gate, so a test can keep calls in
//! flight for as long as it needs. Like the platform's real Operations service, its methods
//! take any valid token in the auth layer and check their scope in the handler.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crm_platform::auth::require_scope;
use crm_platform::db::Database;
use crm_platform::server::{ServiceContext, ServiceModule};
use crm_proto::google::longrunning as lro;
use crm_proto::google::longrunning::operations_server::{Operations, OperationsServer};
use sqlx::migrate::Migrator;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// The fixture's gRPC service name.
pub const SERVICE: &str = "google.longrunning.Operations";

/// The scope every fixture method needs.
pub const SCOPE: &str = "fixture.read";

/// The operation name `GetOperation` answers NOT_FOUND for.
pub const MISSING: &str = "operations/missing";

/// The fixture owns no tables: its schema holds only the platform's.
static NO_MIGRATIONS: Migrator = Migrator {
    migrations: Cow::Borrowed(&[]),
    ..Migrator::DEFAULT
};

/// The fixture's state, shared by the test and every module built from it.
#[derive(Clone)]
pub struct Fixture {
    gate: Arc<watch::Sender<bool>>,
    calls: Arc<AtomicUsize>,
}

impl Fixture {
    /// A fixture whose gate is closed: `WaitOperation` calls wait.
    pub fn new() -> Self {
        Self {
            gate: Arc::new(watch::Sender::new(false)),
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// How many calls reached the fixture's handlers.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Lets every waiting and later `WaitOperation` call answer.
    pub fn open(&self) {
        self.gate.send_replace(true);
    }

    /// Builds the module, as a service crate's `module` function does.
    pub fn module(&self, ctx: &ServiceContext) -> anyhow::Result<ServiceModule> {
        let database = Database::connect_lazy(&ctx.config.database, "fixture", &NO_MIGRATIONS)?;
        let service = OperationsServer::new(self.clone());
        Ok(ServiceModule {
            name: "fixture",
            grpc_service: SERVICE,
            database,
            operations: None,
            add_routes: Box::new(move |routes| {
                routes.add_service(service);
            }),
        })
    }

    /// Counts a call that passed the scope check and answers it.
    fn done<T>(
        &self,
        request: Request<T>,
        name: impl FnOnce(T) -> String,
    ) -> Result<Response<lro::Operation>, Status> {
        require_scope(&request, SCOPE)?;
        let name = name(request.into_inner());
        self.calls.fetch_add(1, Ordering::SeqCst);
        if name == MISSING {
            return Err(Status::not_found(format!("no operation {name}")));
        }
        Ok(Response::new(lro::Operation {
            name,
            done: true,
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl Operations for Fixture {
    async fn list_operations(
        &self,
        _: Request<lro::ListOperationsRequest>,
    ) -> Result<Response<lro::ListOperationsResponse>, Status> {
        Err(Status::unimplemented("the fixture lists nothing"))
    }

    async fn get_operation(
        &self,
        request: Request<lro::GetOperationRequest>,
    ) -> Result<Response<lro::Operation>, Status> {
        self.done(request, |r| r.name)
    }

    async fn delete_operation(
        &self,
        _: Request<lro::DeleteOperationRequest>,
    ) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("the fixture deletes nothing"))
    }

    async fn cancel_operation(
        &self,
        _: Request<lro::CancelOperationRequest>,
    ) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("the fixture cancels nothing"))
    }

    async fn wait_operation(
        &self,
        request: Request<lro::WaitOperationRequest>,
    ) -> Result<Response<lro::Operation>, Status> {
        let answer = self.done(request, |r| r.name);
        let mut gate = self.gate.subscribe();
        // The sender lives as long as the fixture, so waiting only ends when the gate opens.
        let _ = gate.wait_for(|open| *open).await;
        answer
    }
}
