//! The `crm` binary as a user runs it: configuration errors, serving, grpcurl, SIGTERM.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "cli-test-secret-cli-test-secret-0123456789";

fn crm() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_crm"));
    command
        .env_remove("CRM_CONFIG_FILE")
        .env("CRM__AUTH__JWT_SECRET", SECRET)
        .env("CRM__TELEMETRY__LOG_FORMAT", "json");
    command
}

/// grpcurl as users have it: CRM_TEST_GRPCURL (set by scripts/test) or on PATH.
fn grpcurl() -> PathBuf {
    let path = std::env::var("CRM_TEST_GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let found = Command::new(&path).arg("-version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "this test needs grpcurl: run scripts/test (it installs one) or set CRM_TEST_GRPCURL"
    );
    PathBuf::from(path)
}

fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn fresh_database() -> String {
    let name = format!("crm_test_cli_{}", std::process::id());
    let admin = admin_url();
    let (base, _) = admin.rsplit_once('/').unwrap();
    for sql in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name}"),
    ] {
        let status = Command::new("psql")
            .arg(&admin)
            .arg("-qc")
            .arg(&sql)
            .status()
            .expect("psql is needed");
        assert!(status.success(), "{sql} failed against {admin}");
    }
    format!("{base}/{name}")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_grpcurl(args: &[&str]) -> Output {
    Command::new(grpcurl())
        .args(args)
        .output()
        .expect("running grpcurl")
}

#[test]
fn a_bad_config_value_exits_64_naming_the_key() {
    let output = crm()
        .args(["serve", "all"])
        .env("CRM__SERVER__CONCURRENCY_LIMIT", "lots")
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("server.concurrency_limit"));
}

#[test]
fn token_prints_a_jwt_on_its_last_line_that_the_server_accepts_for_every_customer_method() {
    let output = crm().args(["token", "--subject", "ops"]).output().unwrap();

    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let token = stdout.lines().last().unwrap();
    let policy = crm_platform::auth::AuthPolicy::new(
        SECRET,
        "crm-suite",
        "crm-suite",
        &[crm_customer::SCOPES],
    );
    for (method, _) in crm_customer::SCOPES {
        let principal = policy
            .authorize(method, Some(&format!("Bearer {token}")))
            .unwrap_or_else(|status| panic!("{method}: {status:?}"))
            .expect("a business method has a principal");
        assert_eq!(principal.subject, "ops");
    }
}

#[test]
fn token_with_named_scopes_grants_only_those() {
    let output = crm()
        .args(["token", "--scopes", "customer.read"])
        .output()
        .unwrap();

    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let header = format!("Bearer {}", stdout.lines().last().unwrap());
    let policy = crm_platform::auth::AuthPolicy::new(
        SECRET,
        "crm-suite",
        "crm-suite",
        &[crm_customer::SCOPES],
    );
    let read = policy.authorize(
        "/crm.customer.v1.CustomerService/GetCustomer",
        Some(&header),
    );
    let write = policy.authorize(
        "/crm.customer.v1.CustomerService/CreateCustomer",
        Some(&header),
    );
    assert!(read.is_ok(), "{read:?}");
    assert_eq!(write.unwrap_err().code(), tonic::Code::PermissionDenied);
}

#[test]
fn token_with_service_names_a_service_principal_and_without_it_a_user() {
    let policy = crm_platform::auth::AuthPolicy::new(
        SECRET,
        "crm-suite",
        "crm-suite",
        &[crm_customer::SCOPES],
    );
    let kind_of = |args: &[&str]| {
        let output = crm().args(args).output().unwrap();
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        let header = format!("Bearer {}", stdout.lines().last().unwrap());
        policy
            .authorize(
                "/crm.customer.v1.CustomerService/GetCustomer",
                Some(&header),
            )
            .unwrap()
            .unwrap()
            .kind
    };

    let service = kind_of(&["token", "--subject", "sales", "--service"]);
    let person = kind_of(&["token", "--subject", "ops"]);

    assert_eq!(service, crm_proto::crm::common::v1::PrincipalKind::Service);
    assert_eq!(person, crm_proto::crm::common::v1::PrincipalKind::User);
}

#[test]
fn grpcurl_can_list_call_and_the_server_stops_cleanly_on_sigterm() {
    let database_url = fresh_database();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let migrate = crm()
        .args(["migrate", "all"])
        .env("DATABASE_URL", &database_url)
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let server = Server(
        crm()
            .args(["serve", "all"])
            .env("DATABASE_URL", &database_url)
            .env("CRM__SERVER__LISTEN_ADDR", &addr)
            .env("CRM__TELEMETRY__METRICS_ADDR", "")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let health = run_grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
        if String::from_utf8_lossy(&health.stdout).contains("SERVING") && health.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "the server never became SERVING");
        std::thread::sleep(Duration::from_millis(200));
    }

    let listed = run_grpcurl(&["-plaintext", &addr, "list"]);
    let token_output = crm().arg("token").output().unwrap();
    let token = String::from_utf8(token_output.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    let auth = format!("authorization: Bearer {token}");
    let created = run_grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        r#"{"customer": {"display_name": "Ada Lovelace", "email": "ada@example.com"}}"#,
        &addr,
        "crm.customer.v1.CustomerService/CreateCustomer",
    ]);
    let rejected = run_grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        r#"{"customer": {"display_name": "Ada", "email": "nope"}}"#,
        &addr,
        "crm.customer.v1.CustomerService/CreateCustomer",
    ]);

    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("crm.customer.v1.CustomerService"),
        "{listed}"
    );
    assert!(listed.contains("grpc.health.v1.Health"), "{listed}");
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    assert!(String::from_utf8_lossy(&created.stdout).contains("\"displayName\": \"Ada Lovelace\""));
    let rejected_text = String::from_utf8_lossy(&rejected.stderr);
    assert!(rejected_text.contains("InvalidArgument"), "{rejected_text}");
    assert!(
        rejected_text.contains("customer.email"),
        "error details decode through reflection: {rejected_text}"
    );

    let mut server = server;
    let kill = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "clean exit after SIGTERM, got {status}");
}
