//! Validate: what the API server could not check about a spec (pure).

use streamjob_api::{IncompatibleState, StreamJob, StreamJobSpec, state_layout};
use streamjob_worker::pipeline::Pipeline;

use super::{Blocker, names::MAX_JOB_NAME};

/// The first reason the spec of `job` cannot run, if any.
pub fn spec_blocker(job: &StreamJob) -> Option<Blocker> {
    let name = job.metadata.name.as_deref().unwrap_or_default();
    if name.len() > MAX_JOB_NAME {
        return Some(Blocker::new(
            "NameTooLong",
            format!(
                "the job name {name:?} has {} characters; at most {MAX_JOB_NAME} fit in the \
                 names and labels of its workers",
                name.len()
            ),
        ));
    }
    if let Err(error) = Pipeline::compile(&job.spec.pipeline) {
        let step = match &error.name {
            Some(name) => format!("spec.pipeline[{}] ({name})", error.index),
            None => format!("spec.pipeline[{}]", error.index),
        };
        return Some(Blocker::new(
            "InvalidPipeline",
            format!("{step}: {}", error.message),
        ));
    }
    None
}

/// Why the pipeline of `job` cannot take over the state built under `running` (the
/// published plan's spec), if it cannot and the spec does not allow dropping that state.
pub fn state_blocker(job: &StreamJob, running: &StreamJobSpec) -> Option<Blocker> {
    let (saved, wanted) = (
        state_layout(&running.pipeline),
        state_layout(&job.spec.pipeline),
    );
    // A pipeline without windows saved no window state: any new one starts empty anyway.
    let fits = saved.is_empty() || saved == wanted;
    if fits || job.spec.upgrade.incompatible_state == IncompatibleState::DropState {
        return None;
    }
    let describe = |layout: &str| {
        if layout.is_empty() {
            "no window steps".to_owned()
        } else {
            layout.replace(';', ", ")
        }
    };
    Some(Blocker::new(
        "IncompatibleStateChange",
        format!(
            "spec.pipeline changes the window steps ({} → {}): the saved window state does not \
             fit them, so the workers keep the previous pipeline; set \
             spec.upgrade.incompatibleState to dropState to start these windows empty at the \
             saved offsets",
            describe(&saved),
            describe(&wanted)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use streamjob_api::PipelineStep;

    use super::*;

    fn windowed(size: &str, map: &str) -> StreamJob {
        let window: PipelineStep = serde_yaml::from_str(&format!(
            "window: {{size: {size}, aggregates: [{{name: n, function: count}}]}}"
        ))
        .unwrap();
        StreamJob::test("clicks")
            .step(PipelineStep::map(map))
            .step(PipelineStep::key_by(".user"))
            .step(window)
    }

    #[test]
    fn a_changed_map_keeps_the_window_state_but_a_changed_window_is_refused() {
        let running = windowed("10s", ".").spec;
        assert_eq!(
            state_blocker(&windowed("10s", "{user: .u}"), &running),
            None
        );
        let blocker = state_blocker(&windowed("20s", "."), &running).unwrap();
        assert_eq!(blocker.reason, "IncompatibleStateChange");
        assert!(
            blocker.message.contains("10s") && blocker.message.contains("20s"),
            "{blocker:?}"
        );
        let stateless = StreamJob::test("clicks").step(PipelineStep::map(".")).spec;
        assert_eq!(
            state_blocker(&windowed("20s", "."), &stateless),
            None,
            "a first window loses nothing"
        );
        let removed = StreamJob::test("clicks").step(PipelineStep::map("."));
        assert!(
            state_blocker(&removed, &running).is_some(),
            "a window removed"
        );
        let mut allowed = windowed("20s", ".");
        allowed.spec.upgrade.incompatible_state = IncompatibleState::DropState;
        assert_eq!(state_blocker(&allowed, &running), None);
    }

    #[test]
    fn a_valid_job_has_no_blocker() {
        let job = StreamJob::test("clicks").step(PipelineStep::filter(".n > 1"));
        assert_eq!(spec_blocker(&job), None);
    }

    #[test]
    fn a_jq_expression_that_does_not_compile_names_the_step() {
        let job = StreamJob::test("clicks")
            .step(PipelineStep::filter(".n > 1"))
            .step(PipelineStep::map("{a: .b"));
        let blocker = spec_blocker(&job).unwrap();
        assert_eq!(blocker.reason, "InvalidPipeline");
        assert!(
            blocker.message.starts_with("spec.pipeline[1]: "),
            "{}",
            blocker.message
        );
    }

    #[test]
    fn a_name_too_long_for_child_labels_is_refused() {
        let job = StreamJob::test(&"x".repeat(MAX_JOB_NAME + 1));
        assert_eq!(spec_blocker(&job).unwrap().reason, "NameTooLong");
    }
}
