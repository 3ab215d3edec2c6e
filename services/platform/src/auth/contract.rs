//! The scope each method needs, read from the `(crm.common.v1.auth)` method option of the
//! contracts (`proto/crm/common/v1/auth.proto`) in their encoded descriptor set.
//!
//! The option is decoded with a small prost mirror of the descriptor messages that keeps only
//! the package, service and method names and the option's field. `prost_types` cannot do it (its
//! `MethodOptions` drops extensions), and `prost-reflect` would add a runtime dependency and a
//! second descriptor pool to read one string per method.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message as _;

/// Field number of the `(crm.common.v1.auth)` extension of `google.protobuf.MethodOptions`, as
/// `proto/crm/common/v1/auth.proto` declares it. The mirror below decodes this tag.
pub const AUTH_OPTION_FIELD: u32 = 51000;

/// Services whose methods need a valid token but no scope fixed in the contract: the handler
/// decides, with [`super::require_scope`], from the resource a call names. An operation belongs to
/// one service, so `google.longrunning.Operations` checks `<service>.read` / `<service>.write` of
/// the operation's owner.
pub const SCOPE_CHECKED_IN_HANDLER: &[&str] = &["google.longrunning.Operations"];

/// The package prefix of the suite's own services: each of their methods must declare a scope.
const CONTRACT_PACKAGE_PREFIX: &str = "crm.";

/// Just enough of `google.protobuf.FileDescriptorSet` to read method options; tag numbers are
/// descriptor.proto's.
mod mirror {
    use crm_proto::crm::common::v1::AuthRule;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileDescriptorSet {
        #[prost(message, repeated, tag = "1")]
        pub file: Vec<FileDescriptor>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileDescriptor {
        #[prost(string, optional, tag = "2")]
        pub package: Option<String>,
        #[prost(message, repeated, tag = "6")]
        pub service: Vec<ServiceDescriptor>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServiceDescriptor {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(message, repeated, tag = "2")]
        pub method: Vec<MethodDescriptor>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MethodDescriptor {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(message, optional, tag = "4")]
        pub options: Option<MethodOptions>,
    }

    /// `google.protobuf.MethodOptions` with only the `(crm.common.v1.auth)` extension; the tag
    /// is `super::AUTH_OPTION_FIELD` (an attribute cannot name a constant).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MethodOptions {
        #[prost(message, optional, tag = "51000")]
        pub auth: Option<AuthRule>,
    }
}

/// Why the scopes of the served services cannot be established; `crm serve` refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    /// The descriptor set is not a `FileDescriptorSet`.
    #[error("the contracts' descriptor set cannot be decoded: {0}")]
    Descriptor(#[from] prost::DecodeError),
    /// A served service is not described at all, so none of its methods has a scope.
    #[error(
        "the served service {service} is not in the contracts' descriptor set, so its methods \
         declare no scope"
    )]
    UnknownService {
        /// Fully qualified gRPC service name.
        service: String,
    },
    /// A served method lacks the option (or sets an empty scope).
    #[error(
        "the served method {path} declares no scope: add \
         `option (crm.common.v1.auth).scope = \"<service>.<access>\";` to it in its .proto"
    )]
    MissingScope {
        /// The method's gRPC path, `/package.Service/Method`.
        path: String,
    },
}

/// The scope each method of a set of served services needs, keyed by gRPC path
/// (`/crm.customer.v1.CustomerService/GetCustomer`), as their contracts declare it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContractScopes {
    by_path: BTreeMap<String, String>,
}

impl ContractScopes {
    /// The scopes of `services` (fully qualified gRPC names) from the suite's contracts,
    /// [`crm_proto::FILE_DESCRIPTOR_SET`].
    ///
    /// Fails naming the service or method when a service is not described or a method of it
    /// declares no scope. Services in [`SCOPE_CHECKED_IN_HANDLER`] are skipped: the handler checks.
    pub fn for_services(services: &[&str]) -> Result<Self, ScopeError> {
        Self::from_descriptor_set(crm_proto::FILE_DESCRIPTOR_SET, services)
    }

    /// As [`Self::for_services`], from any encoded `FileDescriptorSet`.
    pub fn from_descriptor_set(encoded: &[u8], services: &[&str]) -> Result<Self, ScopeError> {
        let set = mirror::FileDescriptorSet::decode(encoded)?;
        let mut by_path = BTreeMap::new();
        for &wanted in services {
            if SCOPE_CHECKED_IN_HANDLER.contains(&wanted) {
                continue;
            }
            let service = described_services(&set)
                .find(|(name, _)| name == wanted)
                .map(|(_, service)| service)
                .ok_or_else(|| ScopeError::UnknownService {
                    service: wanted.to_string(),
                })?;
            for method in &service.method {
                let path = format!("/{wanted}/{}", method.name());
                let scope = method
                    .options
                    .as_ref()
                    .and_then(|options| options.auth.as_ref())
                    .map(|rule| rule.scope.trim())
                    .filter(|scope| !scope.is_empty())
                    .ok_or_else(|| ScopeError::MissingScope { path: path.clone() })?;
                by_path.insert(path, scope.to_string());
            }
        }
        Ok(Self { by_path })
    }

    /// The scope the method at `path` needs, if it is one of the served methods.
    pub fn scope_of(&self, path: &str) -> Option<&str> {
        self.by_path.get(path).map(String::as_str)
    }

    /// Every scope some served method needs, each once, sorted.
    pub fn scopes(&self) -> BTreeSet<&str> {
        self.by_path.values().map(String::as_str).collect()
    }

    /// Every served method's gRPC path and scope, sorted by path.
    pub fn methods(&self) -> impl Iterator<Item = (&str, &str)> {
        self.by_path.iter().map(|(p, s)| (p.as_str(), s.as_str()))
    }

    /// How many methods are described.
    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    /// Whether no method is described.
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }
}

/// The fully qualified names of every service in a `crm.*` package of the suite's contracts
/// (those whose methods must each declare a scope), sorted.
pub fn contract_services() -> Result<Vec<String>, ScopeError> {
    let set = mirror::FileDescriptorSet::decode(crm_proto::FILE_DESCRIPTOR_SET)?;
    let mut names: Vec<String> = described_services(&set)
        .map(|(name, _)| name)
        .filter(|name| name.starts_with(CONTRACT_PACKAGE_PREFIX))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Every service of the set with its fully qualified name.
fn described_services(
    set: &mirror::FileDescriptorSet,
) -> impl Iterator<Item = (String, &mirror::ServiceDescriptor)> {
    set.file.iter().flat_map(|file| {
        file.service.iter().map(move |service| {
            let name = match file.package() {
                "" => service.name().to_string(),
                package => format!("{package}.{}", service.name()),
            };
            (name, service)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An encoded set with one service, `crm.test.v1.TestService`, whose methods are
    /// `(name, scope)`; `None` leaves the method without the option.
    fn descriptor_set(methods: &[(&str, Option<&str>)]) -> Vec<u8> {
        let method = methods
            .iter()
            .map(|(name, scope)| mirror::MethodDescriptor {
                name: Some(name.to_string()),
                options: scope.map(|scope| mirror::MethodOptions {
                    auth: Some(crm_proto::crm::common::v1::AuthRule {
                        scope: scope.to_string(),
                    }),
                }),
            })
            .collect();
        mirror::FileDescriptorSet {
            file: vec![mirror::FileDescriptor {
                package: Some("crm.test.v1".into()),
                service: vec![mirror::ServiceDescriptor {
                    name: Some("TestService".into()),
                    method,
                }],
            }],
        }
        .encode_to_vec()
    }

    #[test]
    fn the_scope_of_each_method_is_read_from_its_option() {
        let set = descriptor_set(&[("Get", Some("test.read")), ("Put", Some("test.write"))]);

        let scopes =
            ContractScopes::from_descriptor_set(&set, &["crm.test.v1.TestService"]).unwrap();

        assert_eq!(
            scopes.methods().collect::<Vec<_>>(),
            [
                ("/crm.test.v1.TestService/Get", "test.read"),
                ("/crm.test.v1.TestService/Put", "test.write"),
            ]
        );
        assert_eq!(
            scopes.scopes().into_iter().collect::<Vec<_>>(),
            ["test.read", "test.write"]
        );
    }

    #[test]
    fn a_method_without_the_option_is_refused_by_name() {
        let set = descriptor_set(&[("Get", Some("test.read")), ("Put", None)]);

        let err =
            ContractScopes::from_descriptor_set(&set, &["crm.test.v1.TestService"]).unwrap_err();

        assert!(
            matches!(&err, ScopeError::MissingScope { path } if path == "/crm.test.v1.TestService/Put"),
            "{err}"
        );
        assert!(err.to_string().contains("/crm.test.v1.TestService/Put"));
    }

    #[test]
    fn a_method_with_an_empty_scope_is_refused() {
        let set = descriptor_set(&[("Get", Some("  "))]);

        let err =
            ContractScopes::from_descriptor_set(&set, &["crm.test.v1.TestService"]).unwrap_err();

        assert!(matches!(err, ScopeError::MissingScope { .. }), "{err}");
    }

    #[test]
    fn a_service_the_set_does_not_describe_is_refused_by_name() {
        let set = descriptor_set(&[("Get", Some("test.read"))]);

        let err =
            ContractScopes::from_descriptor_set(&set, &["crm.test.v1.Elsewhere"]).unwrap_err();

        assert!(err.to_string().contains("crm.test.v1.Elsewhere"), "{err}");
    }

    #[test]
    fn services_checked_in_their_handlers_need_no_option() {
        let scopes = ContractScopes::for_services(SCOPE_CHECKED_IN_HANDLER).unwrap();

        assert!(scopes.is_empty());
    }

    #[test]
    fn the_mirror_decodes_the_tag_the_constant_names() {
        let mut encoded = Vec::new();
        prost::encoding::message::encode(
            AUTH_OPTION_FIELD,
            &crm_proto::crm::common::v1::AuthRule {
                scope: "x.read".into(),
            },
            &mut encoded,
        );

        let options = mirror::MethodOptions::decode(encoded.as_slice()).unwrap();

        assert_eq!(options.auth.unwrap().scope, "x.read");
    }
}
