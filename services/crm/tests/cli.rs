//! The `crm` binary as a user runs it: configuration errors, serving, grpcurl, SIGTERM, and the
//! deployments (Helm chart, kustomize) agreeing with the services it serves.

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

/// helm as the deploy checks install it: CRM_TEST_HELM (set by scripts/test), the repo's
/// `.local/tools/bin/helm`, or on PATH.
fn helm() -> PathBuf {
    let installed = repo_root().join(".local/tools/bin/helm");
    let path = std::env::var_os("CRM_TEST_HELM")
        .map(PathBuf::from)
        .or_else(|| installed.exists().then_some(installed))
        .unwrap_or_else(|| "helm".into());
    let found = Command::new(&path).arg("version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "this test needs helm 3: run scripts/test (it installs one) or set CRM_TEST_HELM"
    );
    path
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The services this build serves, as `crm serve --help` lists them to users.
fn served_services() -> Vec<String> {
    let output = crm().args(["serve", "--help"]).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let help = String::from_utf8(output.stdout).unwrap();
    let (_, listed) = help
        .split_once("any of this build's: ")
        .unwrap_or_else(|| panic!("`crm serve --help` lists no services:\n{help}"));
    let listed = listed.lines().next().unwrap();
    let mut names: Vec<String> = listed.split(", ").map(|s| s.trim().to_string()).collect();
    names.sort();
    names
}

fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn fresh_database() -> String {
    fresh_database_tagged("")
}

/// A fresh database whose name also carries `tag`, for a second one in the same process.
fn fresh_database_tagged(tag: &str) -> String {
    let name = format!("crm_test_cli_{}{tag}", std::process::id());
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

/// The customer service's method scopes, as its contract declares them.
fn customer_scopes() -> crm_platform::auth::ContractScopes {
    crm_platform::auth::ContractScopes::for_services(&[crm_customer::GRPC_SERVICE]).unwrap()
}

/// The server's policy for tokens signed with the test key.
fn policy() -> crm_platform::auth::AuthPolicy {
    crm_platform::auth::AuthPolicy::new(SECRET, "crm-suite", "crm-suite", customer_scopes())
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
    let policy = policy();
    let methods = customer_scopes();
    assert_eq!(methods.len(), 24);
    for (method, _) in methods.methods() {
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
    let policy = policy();
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
    let policy = policy();
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

/// `url` logging in as `role` (the test server trusts 127.0.0.1).
fn as_role(url: &str, role: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{role}@{host}")
}

#[test]
fn the_server_runs_as_the_runtime_role_that_migrate_created() {
    let admin = fresh_database_tagged("_roles");
    let runtime = as_role(&admin, "crm_customer");
    let addr = format!("127.0.0.1:{}", free_port());
    let migrate = crm()
        .args(["migrate", "all", "--create-roles", "--restrict-public"])
        .env("DATABASE_URL", &admin)
        .output()
        .unwrap();
    assert!(migrate.status.success(), "{migrate:?}");
    // Up to date: the runtime role may run it, because it only reads.
    let again = crm()
        .args(["migrate", "all"])
        .env("DATABASE_URL", &runtime)
        .output()
        .unwrap();
    assert!(again.status.success(), "{again:?}");
    let _server = Server(
        crm()
            .args(["serve", "customer"])
            .env("DATABASE_URL", &runtime)
            .env("CRM__SERVER__LISTEN_ADDR", &addr)
            .env("CRM__TELEMETRY__METRICS_ADDR", "")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let health = loop {
        let health = run_grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
        let text = String::from_utf8_lossy(&health.stdout).to_string();
        if text.contains("\"SERVING\"") || Instant::now() >= deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let token = String::from_utf8(crm().arg("token").output().unwrap().stdout).unwrap();
    let auth = format!("authorization: Bearer {}", token.lines().last().unwrap());

    let created = run_grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        r#"{"customer": {"display_name": "Grace Hopper", "email": "grace@example.com"}}"#,
        &addr,
        "crm.customer.v1.CustomerService/CreateCustomer",
    ]);
    assert!(created.status.success(), "{created:?}");
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let id = created["customer"]["id"].as_str().unwrap();
    let fetched = run_grpcurl(&[
        "-plaintext",
        "-H",
        &auth,
        "-d",
        &format!(r#"{{"id": "{id}"}}"#),
        &addr,
        "crm.customer.v1.CustomerService/GetCustomer",
    ]);

    let stdout = String::from_utf8_lossy(&migrate.stdout);
    assert!(
        stdout.contains("role crm_customer_owner owns schema customer"),
        "{stdout}"
    );
    assert!(
        !String::from_utf8_lossy(&migrate.stderr).contains("note:"),
        "nothing left to PUBLIC: {migrate:?}"
    );
    assert!(health.contains("\"SERVING\""), "{health}");
    assert!(fetched.status.success(), "{fetched:?}");
    assert!(String::from_utf8_lossy(&fetched.stdout).contains("Grace Hopper"));
}

#[test]
fn serve_help_lists_the_services_this_build_serves() {
    let served = served_services();

    assert_eq!(served, ["customer"]);
}

#[test]
fn serving_a_service_this_build_does_not_serve_fails_listing_what_it_serves() {
    let output = crm()
        .args(["serve", "sales"])
        .env(
            "CRM__SERVER__LISTEN_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("CRM__TELEMETRY__METRICS_ADDR", "")
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("\"sales\""), "{stderr}");
    for name in served_services() {
        assert!(stderr.contains(&name), "{name} missing from: {stderr}");
    }
}

#[test]
fn token_grants_by_default_every_scope_the_served_methods_declare() {
    let output = crm().arg("token").output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap();
    let header = format!("Bearer {}", token.lines().last().unwrap());

    let principal = policy()
        .authorize(
            "/crm.customer.v1.CustomerService/GetCustomer",
            Some(&header),
        )
        .unwrap()
        .unwrap();

    let granted: Vec<&str> = principal.scopes.iter().map(String::as_str).collect();
    assert_eq!(
        granted,
        ["customer.gdpr", "customer.read", "customer.write"]
    );
}

/// The `crm serve <name>` arguments of the Deployments in a rendered manifest stream (the chart
/// writes container args as a JSON list).
fn served_by_deployments(manifests: &str) -> Vec<String> {
    let mut names: Vec<String> = manifests
        .lines()
        .filter_map(|line| line.trim().strip_prefix("args: "))
        .filter_map(|args| serde_json::from_str::<Vec<String>>(args).ok())
        .filter(|args| args.first().is_some_and(|a| a == "serve"))
        .flat_map(|args| args.into_iter().skip(1))
        .collect();
    names.sort();
    names
}

#[test]
fn the_charts_default_install_deploys_exactly_the_services_the_binary_serves() {
    let scratch = std::env::temp_dir().join(format!("crm-cli-helm-{}", std::process::id()));
    let output = Command::new(helm())
        .args(["template", "crm"])
        .arg(repo_root().join("helm/crm"))
        .env("HELM_CACHE_HOME", scratch.join("cache"))
        .env("HELM_CONFIG_HOME", scratch.join("config"))
        .env("HELM_DATA_HOME", scratch.join("data"))
        .output()
        .expect("running helm template");
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let deployed = served_by_deployments(&String::from_utf8(output.stdout).unwrap());

    assert_eq!(
        deployed,
        served_services(),
        "helm/crm/values.yaml `services.<name>.enabled` must be true exactly for the services \
         `crm serve --help` lists"
    );
}

#[test]
fn the_prod_overlay_deploys_exactly_the_services_the_binary_serves() {
    let overlay = repo_root().join("k8s/overlays/prod");
    let kustomization = std::fs::read_to_string(overlay.join("kustomization.yaml")).unwrap();
    let components: Vec<&str> = kustomization
        .lines()
        .skip_while(|line| line.trim_end() != "resources:")
        .skip(1)
        .map_while(|line| line.strip_prefix("  - "))
        .filter(|resource| !resource.starts_with(".."))
        .collect();

    let mut deployed = Vec::new();
    for component in components {
        let file = std::fs::read_to_string(overlay.join(component).join("kustomization.yaml"))
            .unwrap_or_else(|e| panic!("k8s/overlays/prod/{component}: {e}"));
        let args = file
            .lines()
            .find_map(|line| line.trim().strip_prefix("args: [serve, "))
            .unwrap_or_else(|| panic!("k8s/overlays/prod/{component} runs no `crm serve`"));
        deployed.push(args.trim_end_matches(']').to_string());
    }
    deployed.sort();

    assert_eq!(
        deployed,
        served_services(),
        "k8s/overlays/prod resources must be exactly the services `crm serve --help` lists"
    );
}

#[test]
fn grpcurl_describe_shows_each_methods_scope() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let admin = admin_url();
    let (base, _) = admin.rsplit_once('/').unwrap();
    // Reflection needs no database: the pool is lazy, so a database that does not exist keeps
    // the server NOT_SERVING but answering reflection, and leaves nothing to clean up.
    let server = Server(
        crm()
            .args(["serve", "all"])
            .env("DATABASE_URL", format!("{base}/crm_test_cli_absent"))
            .env("CRM__SERVER__LISTEN_ADDR", &addr)
            .env("CRM__TELEMETRY__METRICS_ADDR", "")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !run_grpcurl(&["-plaintext", &addr, "list"]).status.success() {
        assert!(Instant::now() < deadline, "the server never answered");
        std::thread::sleep(Duration::from_millis(200));
    }

    let described = run_grpcurl(&[
        "-plaintext",
        &addr,
        "describe",
        "crm.customer.v1.CustomerService",
    ]);
    let method = run_grpcurl(&[
        "-plaintext",
        &addr,
        "describe",
        "crm.customer.v1.CustomerService.EraseCustomer",
    ]);
    drop(server);

    let described = String::from_utf8_lossy(&described.stdout);
    let method = String::from_utf8_lossy(&method.stdout);
    let options: Vec<&str> = described
        .lines()
        .filter(|line| line.contains("crm.common.v1.auth"))
        .collect();
    assert_eq!(options.len(), customer_scopes().len(), "{described}");
    assert!(
        method.contains("crm.common.v1.auth") && method.contains("\"customer.gdpr\""),
        "{method}"
    );
}
