//! CRM Suite's protobuf contracts, generated at build time from `proto/crm/**.proto`.
//!
//! Each package is a module named after its proto package (`crm::customer::v1`, …);
//! [`FILE_DESCRIPTOR_SET`] is the encoded descriptor set that servers register with gRPC reflection.

#![allow(clippy::all, clippy::pedantic, unused_qualifications, missing_docs)]

/// The encoded `google.protobuf.FileDescriptorSet` of every CRM Suite contract.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/crm_descriptor.bin"));

/// The googleapis packages the contracts import, vendored under `proto/google/`.
pub mod google {
    /// `google.api`: field behaviour and HTTP annotations.
    pub mod api {
        tonic::include_proto!("google.api");
    }
    /// `google.longrunning`: the AIP-151 `Operation` and the `Operations` service.
    pub mod longrunning {
        tonic::include_proto!("google.longrunning");
    }
    /// `google.rpc`: the `Status` carried by operations and per-item results.
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
    /// `google.type`: calendar dates, times of day and weekdays.
    pub mod r#type {
        tonic::include_proto!("google.r#type");
    }
}

/// `inference`: the Open Inference Protocol (KServe V2 `GRPCInferenceService`), vendored under
/// `proto/inference/` so standard inference clients can call the inference service's models.
pub mod inference {
    tonic::include_proto!("inference");
}

/// The codec every generated service uses: request caps checked at the edge.
#[warn(clippy::all)]
pub mod edge;

/// Generated code, one module per proto package.
pub mod crm {
    /// `crm.common.v1`: types shared by every service.
    pub mod common {
        /// Version 1.
        pub mod v1 {
            tonic::include_proto!("crm.common.v1");
        }
    }
    /// `crm.customer.v1`: the customer records service.
    pub mod customer {
        /// Version 1.
        pub mod v1 {
            tonic::include_proto!("crm.customer.v1");
        }
    }
    /// `crm.sales.v1`: orders, pipeline, quotas and revenue forecasts.
    pub mod sales {
        /// Version 1.
        pub mod v1 {
            tonic::include_proto!("crm.sales.v1");
        }
    }
    /// `crm.support.v1`: tickets, SLAs, agents, CSAT and the knowledge base.
    pub mod support {
        /// Version 1.
        pub mod v1 {
            tonic::include_proto!("crm.support.v1");
        }
    }
    /// `crm.marketing.v1`: segments, campaigns, deliveries and results.
    pub mod marketing {
        /// Version 1.
        pub mod v1 {
            tonic::include_proto!("crm.marketing.v1");
        }
    }
    /// `crm.inference.v1`: model registry, training and predictions.
    pub mod inference {
        /// Version 1.
        pub mod v1 {
            tonic::include_proto!("crm.inference.v1");
        }
    }
}
