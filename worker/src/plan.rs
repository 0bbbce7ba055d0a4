//! The plan a worker runs: the job, the epoch, and which pod owns which partitions.
//!
//! In Kubernetes the operator publishes it; standalone it is read from a file (`--plan`) or
//! derived from a StreamJob manifest (`--job`), which runs every partition in one process.

use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};
use streamjob_api::{StreamJob, StreamJobSpec};
use thiserror::Error;

/// Pod name used by `--job` mode, which owns every partition.
pub const STANDALONE_POD: &str = "standalone";

/// Identity of the job a plan belongs to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JobRef {
    /// Namespace of the StreamJob (`default` standalone).
    pub namespace: String,
    /// Name of the StreamJob.
    pub name: String,
}

/// What one partition restores from when its owner starts it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RestoreSource {
    /// The partition's newest valid checkpoint (the default).
    #[default]
    Latest,
    /// The partition's part of the named savepoint of this job.
    Savepoint(String),
    /// A savepoint part at an object path of the job's store (another job's savepoint, named
    /// by `restoreFrom`).
    Part {
        /// The savepoint's id.
        savepoint: String,
        /// Object path of the part.
        path: String,
    },
}

/// A plan's restore instruction for one partition: `{savepoint: ID}`, or
/// `{savepoint: ID, part: PATH}` for a part outside the job's own savepoints.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PartitionRestore {
    /// Savepoint whose part of the partition to restore.
    pub savepoint: String,
    /// Object path of the part in the job's checkpoint store, when it is not the job's own
    /// savepoint (`restoreFrom`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
}

/// A plan's order to snapshot every running partition into a savepoint when moving to the
/// plan's epoch: `{id: ID}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SavepointOrder {
    /// The savepoint's id (`e<epoch>-<reason>`), its directory under `savepoints/`.
    pub id: String,
}

/// Everything a worker needs to run its share of a job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// The job.
    pub job: JobRef,
    /// Plan epoch; grows each time partitions change owner.
    pub epoch: u64,
    /// The job's spec at this epoch.
    pub spec: StreamJobSpec,
    /// Pod name → partitions it owns.
    pub assignment: BTreeMap<String, Vec<i32>>,
    /// Partitions that restore from something other than their latest checkpoint.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub restore: BTreeMap<i32, PartitionRestore>,
    /// Savepoint to write, before anything moves, by every worker entering this epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint: Option<SavepointOrder>,
}

/// A plan that cannot be used.
#[derive(Debug, Error)]
pub enum PlanError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// I/O error.
        source: std::io::Error,
    },
    /// The file is neither a valid plan nor a valid StreamJob.
    #[error("{path} is not a valid {what}: {source}")]
    Parse {
        /// File path.
        path: String,
        /// What was expected.
        what: &'static str,
        /// Parser error.
        source: serde_yaml::Error,
    },
    /// The StreamJob has no name.
    #[error("the StreamJob manifest has no metadata.name")]
    Unnamed,
    /// A partition is assigned twice.
    #[error("partition {partition} is assigned to both {first} and {second}")]
    DoubleAssignment {
        /// The partition.
        partition: i32,
        /// One owner.
        first: String,
        /// The other owner.
        second: String,
    },
}

impl Plan {
    /// Reads a plan file (YAML or JSON; JSON is YAML).
    pub fn load(path: &Path) -> Result<Self, PlanError> {
        let text = read(path)?;
        let plan: Plan = serde_yaml::from_str(&text).map_err(|source| PlanError::Parse {
            path: path.display().to_string(),
            what: "plan",
            source,
        })?;
        plan.validate()?;
        Ok(plan)
    }

    /// Reads a StreamJob manifest and plans all `partitions` on the standalone pod.
    pub fn from_job_file(path: &Path, partitions: i32) -> Result<Self, PlanError> {
        Self::standalone(load_job(path)?, partitions)
    }

    /// Plans every partition of `job`'s topic on the standalone pod, epoch 1.
    pub fn standalone(job: StreamJob, partitions: i32) -> Result<Self, PlanError> {
        let name = job.metadata.name.clone().ok_or(PlanError::Unnamed)?;
        let namespace = job
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        Ok(Self {
            job: JobRef { namespace, name },
            epoch: 1,
            spec: job.spec,
            assignment: BTreeMap::from([(STANDALONE_POD.to_owned(), (0..partitions).collect())]),
            restore: BTreeMap::new(),
            savepoint: None,
        })
    }

    /// Partitions owned by `pod`, sorted.
    pub fn partitions_of(&self, pod: &str) -> Vec<i32> {
        let mut owned = self.assignment.get(pod).cloned().unwrap_or_default();
        owned.sort_unstable();
        owned.dedup();
        owned
    }

    /// What `partition` restores from.
    pub fn restore_source(&self, partition: i32) -> RestoreSource {
        match self.restore.get(&partition) {
            Some(PartitionRestore {
                savepoint,
                part: Some(path),
            }) => RestoreSource::Part {
                savepoint: savepoint.clone(),
                path: path.clone(),
            },
            Some(restore) => RestoreSource::Savepoint(restore.savepoint.clone()),
            None => RestoreSource::Latest,
        }
    }

    /// Consumer group id for offset commits: the spec's, else `streamjob.<ns>.<name>`.
    pub fn group_id(&self) -> String {
        self.spec
            .source
            .kafka
            .group_id
            .clone()
            .unwrap_or_else(|| format!("streamjob.{}.{}", self.job.namespace, self.job.name))
    }

    /// Checks that no partition has two owners.
    pub fn validate(&self) -> Result<(), PlanError> {
        let mut owners: BTreeMap<i32, &str> = BTreeMap::new();
        for (pod, partitions) in &self.assignment {
            for &partition in partitions {
                if let Some(first) = owners.insert(partition, pod) {
                    if first != pod {
                        return Err(PlanError::DoubleAssignment {
                            partition,
                            first: first.to_owned(),
                            second: pod.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reads a StreamJob manifest.
pub fn load_job(path: &Path) -> Result<StreamJob, PlanError> {
    let text = read(path)?;
    serde_yaml::from_str(&text).map_err(|source| PlanError::Parse {
        path: path.display().to_string(),
        what: "StreamJob manifest",
        source,
    })
}

fn read(path: &Path) -> Result<String, PlanError> {
    std::fs::read_to_string(path).map_err(|source| PlanError::Read {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = r#"
job: {namespace: team-a, name: clicks}
epoch: 4
spec:
  source: {kafka: {bootstrapServers: "127.0.0.1:9092", topic: clicks}}
  sink: {log: {}}
assignment:
  clicks-a: [2, 0]
  clicks-b: [1, 3]
restore:
  1: {savepoint: sp-7}
savepoint: {id: e4-rescale}
"#;

    #[test]
    fn plan_files_parse_with_spec_defaults() {
        let plan: Plan = serde_yaml::from_str(PLAN).unwrap();
        plan.validate().unwrap();
        assert_eq!(plan.epoch, 4);
        assert_eq!(plan.partitions_of("clicks-a"), vec![0, 2]);
        assert_eq!(plan.partitions_of("nobody"), Vec::<i32>::new());
        assert_eq!(
            plan.restore_source(1),
            RestoreSource::Savepoint("sp-7".into())
        );
        assert_eq!(plan.restore_source(0), RestoreSource::Latest);
        assert_eq!(plan.group_id(), "streamjob.team-a.clicks");
        assert_eq!(plan.spec.parallelism, 1, "spec defaults apply");
        assert_eq!(plan.spec.checkpoint.retained, 3);
        assert_eq!(
            plan.savepoint,
            Some(SavepointOrder {
                id: "e4-rescale".into()
            })
        );
    }

    #[test]
    fn a_plan_without_a_savepoint_order_parses_and_writes_none() {
        let text = PLAN.replace("savepoint: {id: e4-rescale}\n", "");
        let plan: Plan = serde_yaml::from_str(&text).unwrap();
        assert_eq!(plan.savepoint, None);
        let written = serde_yaml::to_string(&plan).unwrap();
        assert!(!written.contains("savepoint: null"), "{written}");
        let mut ordered = plan;
        ordered.savepoint = Some(SavepointOrder { id: "e5-x".into() });
        let written = serde_yaml::to_string(&ordered).unwrap();
        assert!(written.contains("savepoint:\n  id: e5-x"), "{written}");
    }

    #[test]
    fn a_partition_with_two_owners_is_refused() {
        let mut plan: Plan = serde_yaml::from_str(PLAN).unwrap();
        plan.assignment.insert("clicks-c".into(), vec![3]);
        let err = plan.validate().unwrap_err();
        assert!(
            err.to_string().contains("partition 3 is assigned to both"),
            "{err}"
        );
    }

    #[test]
    fn standalone_plans_own_every_partition() {
        let job = StreamJob::new(
            "j",
            serde_yaml::from_str(
                "source: {kafka: {bootstrapServers: b, topic: t}}\nsink: {log: {}}",
            )
            .unwrap(),
        );
        let plan = Plan::standalone(job, 4).unwrap();
        assert_eq!(plan.partitions_of(STANDALONE_POD), vec![0, 1, 2, 3]);
        assert_eq!(
            plan.job,
            JobRef {
                namespace: "default".into(),
                name: "j".into()
            }
        );
    }
}
