//! Tokens signed with the test configuration's key, and the client interceptor that sends them.

use std::time::Duration;

use crm_proto::crm::common::v1::{Principal, PrincipalKind};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::auth::{Claims, mint_service_token, mint_token};

/// The `auth.jwt_secret` of every test server's configuration.
pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// The issuer test servers accept (the configuration's default).
pub const ISSUER: &str = "crm-suite";

/// The audience test servers accept (the configuration's default).
pub const AUDIENCE: &str = "crm-suite";

/// The subject of [`user_token`]s: the USER principal ([`test_user`]) that audit fields name.
pub const SUBJECT: &str = "test";

/// The metadata key bearer tokens travel in.
const AUTHORIZATION: &str = "authorization";

/// How long minted test tokens live: far longer than any test.
const TOKEN_LIFETIME: Duration = Duration::from_secs(600);

/// A live token of the person [`SUBJECT`] granting `scopes`.
pub fn user_token(scopes: &[&str]) -> String {
    mint_token(
        JWT_SECRET,
        ISSUER,
        AUDIENCE,
        SUBJECT,
        scopes,
        TOKEN_LIFETIME,
    )
}

/// A live service token (`principal_kind: "service"`) of `subject` granting `scopes`.
pub fn service_token(subject: &str, scopes: &[&str]) -> String {
    mint_service_token(
        JWT_SECRET,
        ISSUER,
        AUDIENCE,
        subject,
        scopes,
        TOKEN_LIFETIME,
    )
}

/// `claims` signed (HS256) with the test key, as they are: expired, not yet valid or from
/// another issuer if the test says so (`user_token` only issues live tokens).
pub fn signed(claims: &Claims) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &key)
        .expect("test claims serialize")
}

/// A principal of `kind` with `id`.
pub fn principal(kind: PrincipalKind, id: &str) -> Principal {
    Principal {
        kind: kind as i32,
        id: id.into(),
    }
}

/// The USER principal that [`user_token`]s name.
pub fn test_user() -> Principal {
    principal(PrincipalKind::User, SUBJECT)
}

/// A client interceptor that sends `authorization: Bearer <token>` with every call, unless
/// the call carries its own `authorization` (a test of malformed headers) or there is no token
/// (an anonymous caller).
#[derive(Debug, Clone, Default)]
pub struct BearerAuth {
    header: Option<AsciiMetadataValue>,
}

impl BearerAuth {
    /// Sends `token` (as is; `None`: nothing).
    pub fn new(token: impl Into<Option<String>>) -> Self {
        let header = token.into().map(|token| {
            format!("Bearer {token}")
                .parse()
                .expect("a token is a valid header value")
        });
        Self { header }
    }

    /// `message` as a request carrying the token: for clients without the interceptor.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        self.authorize(request.metadata_mut());
        request
    }

    fn authorize(&self, metadata: &mut MetadataMap) {
        if let Some(header) = &self.header
            && !metadata.contains_key(AUTHORIZATION)
        {
            metadata.insert(AUTHORIZATION, header.clone());
        }
    }
}

impl Interceptor for BearerAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        self.authorize(request.metadata_mut());
        Ok(request)
    }
}

/// A channel whose every call carries a bearer token: `FooClient::new(channel)` on it is a
/// typed client with auth.
pub type AuthorizedChannel = InterceptedService<Channel, BearerAuth>;
