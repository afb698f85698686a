//! `GetContainerEvents`: a stream of container created/started/stopped/deleted events, each with
//! its pod's status and the statuses of the pod's containers at that moment.

use super::CriService;
use super::container_convert;
use super::sandbox_convert;
use crate::container::events::{self, ContainerEvent, ContainerEventKind};
use futures_util::StreamExt;
use keelson_cri::v1::{ContainerEventResponse, ContainerEventType, GetEventsRequest};
use std::sync::Arc;
use tonic::Status;
use tonic::codegen::BoxStream;

pub fn handle(
    svc: &CriService,
    _req: GetEventsRequest,
) -> Result<BoxStream<ContainerEventResponse>, Status> {
    let rx = svc.containers.events.subscribe();
    let manager = svc.containers.clone();
    svc.containers.events.ensure_poller(
        events::EXIT_POLL,
        Arc::new(move || {
            // Listing folds exits the shims recorded into the records, which emits STOPPED.
            manager.list();
        }),
    );
    let stream = events::subscription(rx).map(|e| Ok(to_cri(&e)));
    Ok(Box::pin(stream))
}

fn to_cri(e: &ContainerEvent) -> ContainerEventResponse {
    let kind = match e.kind {
        ContainerEventKind::Created => ContainerEventType::ContainerCreatedEvent,
        ContainerEventKind::Started => ContainerEventType::ContainerStartedEvent,
        ContainerEventKind::Stopped => ContainerEventType::ContainerStoppedEvent,
        ContainerEventKind::Deleted => ContainerEventType::ContainerDeletedEvent,
    };
    ContainerEventResponse {
        container_id: e.container_id.clone(),
        container_event_type: kind as i32,
        created_at: e.at,
        pod_sandbox_status: e.sandbox.as_ref().map(sandbox_convert::status),
        containers_statuses: e.containers.iter().map(container_convert::status).collect(),
    }
}
