//! The committed CRD must be exactly what `streamjob-operator crd` prints.

use std::path::Path;

#[test]
fn committed_crd_matches_generated_crd() {
    let committed_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/streamjob.yaml");
    let committed = std::fs::read_to_string(&committed_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", committed_path.display()));
    let generated = streamjob_operator::crdgen::crd_yaml().unwrap();
    assert!(
        committed == generated,
        "crds/streamjob.yaml is out of date; regenerate it with \
         `scripts/update-crds`"
    );
}

#[test]
fn chart_crd_template_includes_the_generated_crd() {
    // The chart renders the CRD from a copy of the generated file so `helm upgrade` updates it.
    let chart_copy = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/streamjob-operator/files/streamjob.crd.yaml");
    let chart = std::fs::read_to_string(&chart_copy)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", chart_copy.display()));
    let generated = streamjob_operator::crdgen::crd_yaml().unwrap();
    assert!(
        chart == generated,
        "the chart's CRD copy is out of date; run `scripts/update-crds`"
    );
}
