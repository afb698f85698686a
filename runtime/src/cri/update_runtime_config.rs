//! `UpdateRuntimeConfig`: the kubelet announces the node's pod CIDR. keelson's pod network is
//! whatever the CNI conflist in `--cni-conf-dir` says (as containerd's without a conf template),
//! so the CIDR is checked and logged, not applied.

use keelson_cri::v1::{UpdateRuntimeConfigRequest, UpdateRuntimeConfigResponse};
use std::net::IpAddr;
use tonic::Status;

pub fn handle(req: UpdateRuntimeConfigRequest) -> Result<UpdateRuntimeConfigResponse, Status> {
    let cidr = req
        .runtime_config
        .and_then(|c| c.network_config)
        .map(|n| n.pod_cidr)
        .unwrap_or_default();
    // The kubelet may send several, comma-separated (dual stack).
    for one in cidr.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        check_cidr(one)
            .map_err(|why| Status::invalid_argument(format!("invalid pod CIDR {one:?}: {why}")))?;
    }
    if !cidr.is_empty() {
        tracing::info!(pod_cidr = %cidr, "the kubelet set the node's pod CIDR; pod addresses come from the CNI configuration");
    }
    Ok(UpdateRuntimeConfigResponse {})
}

fn check_cidr(cidr: &str) -> Result<(), &'static str> {
    let (ip, prefix) = cidr.split_once('/').ok_or("expected ADDRESS/PREFIX")?;
    let ip: IpAddr = ip.parse().map_err(|_| "not an IP address")?;
    let prefix: u8 = prefix.parse().map_err(|_| "the prefix is not a number")?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err("the prefix is longer than the address");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keelson_cri::v1::{NetworkConfig, RuntimeConfig};

    fn req(cidr: &str) -> UpdateRuntimeConfigRequest {
        UpdateRuntimeConfigRequest {
            runtime_config: Some(RuntimeConfig {
                network_config: Some(NetworkConfig {
                    pod_cidr: cidr.into(),
                }),
            }),
        }
    }

    #[test]
    fn valid_empty_and_dual_stack_cidrs_are_accepted() {
        assert!(handle(req("10.88.0.0/16")).is_ok());
        assert!(handle(req("10.88.0.0/16,fd00:10:88::/64")).is_ok());
        assert!(handle(req("")).is_ok());
        assert!(handle(UpdateRuntimeConfigRequest::default()).is_ok());
    }

    #[test]
    fn malformed_cidrs_are_invalid_arguments_naming_them() {
        for bad in [
            "10.88.0.0",
            "10.88.0.0/33",
            "nope/8",
            "fd00::/129",
            "10.0.0.0/x",
        ] {
            let e = handle(req(bad)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(e.message().contains(bad), "{}", e.message());
        }
    }
}
