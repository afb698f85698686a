//! `RuntimeConfig`: tells the kubelet which cgroup driver we use, so both sides agree.

use super::CriService;
use crate::config::CgroupDriver;
use keelson_cri::v1::{
    self, LinuxRuntimeConfiguration, RuntimeConfigRequest, RuntimeConfigResponse,
};
use tonic::Status;

pub fn handle(
    svc: &CriService,
    _req: RuntimeConfigRequest,
) -> Result<RuntimeConfigResponse, Status> {
    let driver = match svc.config.cgroup_driver {
        CgroupDriver::Systemd => v1::CgroupDriver::Systemd,
        CgroupDriver::Cgroupfs => v1::CgroupDriver::Cgroupfs,
    };
    Ok(RuntimeConfigResponse {
        linux: Some(LinuxRuntimeConfiguration {
            cgroup_driver: driver as i32,
        }),
    })
}
