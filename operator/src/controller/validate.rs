//! Validate: what the API server could not check about a spec (pure).

use streamjob_api::StreamJob;
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

#[cfg(test)]
mod tests {
    use streamjob_api::PipelineStep;

    use super::*;

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
