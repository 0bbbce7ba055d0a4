//! object_store against the local S3 server: put, get, list and delete round trip.

// A failed step fails the test: panicking is how these harness helpers report it.
#![allow(clippy::unwrap_used)]

use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, aws::AmazonS3Builder, path::Path};
use streamjob_tests::{stack_env, unique_name};

#[tokio::test]
async fn put_get_list_delete_round_trip() {
    let env = stack_env();
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(&env.s3_bucket)
        .build()
        .expect("S3 store from the stack's environment");
    let prefix = Path::from(unique_name("roundtrip"));
    let a = prefix.clone().join("a.bin");
    let b = prefix.clone().join("nested").join("b.bin");

    store
        .put(&a, PutPayload::from_static(b"first"))
        .await
        .unwrap();
    store
        .put(&b, PutPayload::from(vec![7u8; 1 << 20]))
        .await
        .unwrap();

    let got = store.get(&a).await.unwrap().bytes().await.unwrap();
    assert_eq!(&got[..], b"first");
    let got = store.get(&b).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.len(), 1 << 20);
    assert!(got.iter().all(|&x| x == 7));

    let mut listed: Vec<_> = store
        .list(Some(&prefix))
        .map_ok(|m| (m.location.to_string(), m.size))
        .try_collect()
        .await
        .unwrap();
    listed.sort();
    assert_eq!(listed, vec![(a.to_string(), 5), (b.to_string(), 1 << 20)]);

    store.delete(&a).await.unwrap();
    assert!(matches!(
        store.get(&a).await,
        Err(object_store::Error::NotFound { .. })
    ));
    store.delete(&b).await.unwrap();
    let left: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
    assert!(left.is_empty(), "objects left after delete: {left:?}");
}

#[tokio::test]
async fn create_if_absent_refuses_to_overwrite() {
    // Snapshots are immutable objects written with PutMode::Create; the server must honour it.
    let env = stack_env();
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(&env.s3_bucket)
        .build()
        .unwrap();
    let path = Path::from(unique_name("create")).join("snapshot");
    let opts = || object_store::PutOptions {
        mode: object_store::PutMode::Create,
        ..Default::default()
    };
    store
        .put_opts(&path, PutPayload::from_static(b"one"), opts())
        .await
        .unwrap();
    let second = store
        .put_opts(&path, PutPayload::from_static(b"two"), opts())
        .await;
    assert!(
        matches!(second, Err(object_store::Error::AlreadyExists { .. })),
        "second create-if-absent put must fail with AlreadyExists, got {second:?}"
    );
    let got = store.get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(&got[..], b"one");
}
