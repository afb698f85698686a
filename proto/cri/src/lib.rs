//! CRI v1 (`runtime.v1`) messages and the tonic client/server for RuntimeService and ImageService,
//! plus keelson's own runtime admin API served on the same socket.

/// Generated code for the `runtime.v1` protobuf package.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");

    impl std::fmt::Debug for AuthConfig {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let set = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
            f.debug_struct("AuthConfig")
                .field("username", &self.username)
                .field("password", &set(&self.password))
                .field("auth", &set(&self.auth))
                .field("server_address", &self.server_address)
                .field("identity_token", &set(&self.identity_token))
                .field("registry_token", &set(&self.registry_token))
                .finish()
        }
    }
}

/// Generated code for keelson's `keelson.runtime.admin.v1` package.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod admin {
    tonic::include_proto!("keelson.runtime.admin.v1");
}

pub use v1::image_service_client::ImageServiceClient;
pub use v1::image_service_server::{ImageService, ImageServiceServer};
pub use v1::runtime_service_client::RuntimeServiceClient;
pub use v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};

#[cfg(test)]
mod tests {
    use super::v1::AuthConfig;

    #[test]
    fn auth_config_debug_hides_secrets() {
        let a = AuthConfig {
            username: "alice".into(),
            password: "hunter2".into(),
            auth: "YWxpY2U6aHVudGVyMg==".into(),
            ..Default::default()
        };
        let s = format!("{a:?}");
        assert!(s.contains("alice"));
        assert!(!s.contains("hunter2") && !s.contains("YWxp"), "{s}");
    }
}
