//! Bearer tokens and scopes on every business RPC; health and reflection stay open.

use crate::common::{JWT_SECRET, ada, spawn_app};
use crm_proto::crm::customer::v1 as pb;
use tonic::Code;

#[tokio::test]
async fn a_call_without_a_token_is_unauthenticated() {
    let app = spawn_app().await;

    let status = app
        .anonymous_client()
        .await
        .create(ada())
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_read_only_token_cannot_write() {
    let app = spawn_app().await;

    let status = app
        .client_with_scopes(&["customer.read"])
        .await
        .create(ada())
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("customer.write"));
}

#[tokio::test]
async fn erasure_needs_the_gdpr_scope() {
    let app = spawn_app().await;
    let writer = app
        .client_with_scopes(&["customer.read", "customer.write"])
        .await;
    let created = writer.create(ada()).await.unwrap();

    let status = writer
        .inner
        .clone()
        .erase_customer(writer.request(pb::EraseCustomerRequest {
            id: created.id,
            reason: "asked".into(),
        }))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn an_expired_token_is_unauthenticated() {
    let app = spawn_app().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = crm_platform::auth::Claims {
        sub: "test".into(),
        iss: "crm-suite".into(),
        aud: "crm-suite".into(),
        iat: now - 7200,
        exp: now - 3600,
        scope: "customer.read customer.write".into(),
    };
    let token = jsonwebtoken_token(&claims);
    let mut request = tonic::Request::new(pb::GetCustomerRequest {
        id: uuid::Uuid::now_v7().to_string(),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());

    let status = app
        .anonymous_client()
        .await
        .inner
        .get_customer(request)
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("expired"));
}

fn jsonwebtoken_token(claims: &crm_platform::auth::Claims) -> String {
    // mint_token only issues live tokens, so sign the expired claims by hand (HS256).
    let header = base64_url(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = base64_url(serde_json::to_string(claims).unwrap().as_bytes());
    let signing_input = format!("{header}.{payload}");
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(JWT_SECRET.as_bytes()).unwrap();
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        base64_url(&mac.finalize().into_bytes())
    )
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn health_needs_no_token() {
    let app = spawn_app().await;

    assert_eq!(crate::common::health_of(app.addr).await, 1);
}
