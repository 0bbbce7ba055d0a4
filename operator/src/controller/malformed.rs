//! A StreamJob the API server stored but the operator cannot decode (written under an older
//! schema, or a value the schema allows and the types do not): it gets a `Stalled` condition
//! naming the problem, and nothing else is touched (writes status and an event).

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{
    Api, Resource, ResourceExt,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    runtime::{controller::Action, events::EventType},
};
use serde_json::json;
use streamjob_api::{Phase, StreamJob, StreamJobStatus};

use super::{Context, Error, names::MANAGER, publish_to, status::Transition};

/// Reason of the condition and event.
const REASON: &str = "InvalidObject";

/// Reports `object` as undecodable; waits for it to change.
pub async fn report(
    object: &DynamicObject,
    error: &serde_json::Error,
    ctx: &Context,
) -> Result<Action, Error> {
    let message = format!("the StreamJob does not decode: {error}");
    tracing::warn!(%message, "cannot reconcile a malformed StreamJob");
    let generation = object.metadata.generation;
    let already = object
        .data
        .pointer("/status/observedGeneration")
        .and_then(serde_json::Value::as_i64)
        == generation
        && object
            .data
            .pointer("/status/phase")
            .and_then(serde_json::Value::as_str)
            == Some("Failed");
    if already {
        return Ok(Action::await_change());
    }
    let patch = json!({
        "apiVersion": StreamJob::api_version(&()),
        "kind": StreamJob::kind(&()),
        "status": status(generation, &message, jiff::Timestamp::now()),
    });
    let resource = ApiResource::erase::<StreamJob>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        &object.namespace().unwrap_or_default(),
        &resource,
    );
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await
    .map_err(Error::Status)?;
    let transition = Transition {
        type_: EventType::Warning,
        reason: REASON.into(),
        note: message,
    };
    publish_to(ctx, &object.object_ref(&resource), transition).await;
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// The status of an undecodable job (pure).
fn status(generation: Option<i64>, message: &str, now: jiff::Timestamp) -> StreamJobStatus {
    let condition = |type_: &str, holds: bool| Condition {
        type_: type_.to_owned(),
        status: if holds { "True" } else { "False" }.to_owned(),
        reason: REASON.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time: Time(now),
    };
    StreamJobStatus {
        observed_generation: generation,
        phase: Some(Phase::Failed),
        conditions: vec![
            condition("Ready", false),
            condition("Reconciling", false),
            condition("Stalled", true),
        ],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_undecodable_job_is_stalled_with_the_decoder_message() {
        let status = status(
            Some(3),
            "the StreamJob does not decode: bad",
            jiff::Timestamp::UNIX_EPOCH,
        );
        assert_eq!(status.phase, Some(Phase::Failed));
        let stalled = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Stalled")
            .unwrap();
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", REASON)
        );
        assert_eq!(stalled.observed_generation, Some(3));
        assert!(
            status
                .conditions
                .iter()
                .filter(|c| c.status == "True")
                .count()
                == 1
        );
    }
}
