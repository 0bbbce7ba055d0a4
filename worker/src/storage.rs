//! Opens the object store behind a checkpoint storage URL (`s3://`, `gs://`, `az://`, `file://`).
//!
//! Credentials and endpoints come from the environment (the StreamJob's `checkpoint.secretRef`
//! becomes environment variables of the worker): `AWS_*` for S3, `GOOGLE_*` for GCS, `AZURE_*`
//! for Azure, as the `object_store` builders read them.

use std::{collections::BTreeMap, sync::Arc};

use object_store::{
    ObjectStore,
    aws::{AmazonS3Builder, AmazonS3ConfigKey},
    azure::{AzureConfigKey, MicrosoftAzureBuilder},
    gcp::{GoogleCloudStorageBuilder, GoogleConfigKey},
    local::LocalFileSystem,
    path::Path,
};
use thiserror::Error;
use url::Url;

/// Failure to open checkpoint storage.
#[derive(Debug, Error)]
pub enum StorageError {
    /// The URL does not parse.
    #[error("checkpoint storage URL {url:?} is invalid: {source}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Parser error.
        source: url::ParseError,
    },
    /// The scheme is none of the supported ones.
    #[error("checkpoint storage URL {0:?} must start with s3://, gs://, az:// or file://")]
    UnsupportedScheme(String),
    /// The builder refused its configuration (missing credentials, bad path...).
    #[error("cannot open checkpoint storage {url:?}: {source}")]
    Open {
        /// The URL given.
        url: String,
        /// Builder error.
        source: object_store::Error,
    },
    /// A local directory could not be created.
    #[error("cannot create local checkpoint directory {path}: {source}")]
    LocalDir {
        /// The directory.
        path: String,
        /// I/O error.
        source: std::io::Error,
    },
}

/// An opened store and the prefix inside it where the URL points.
#[derive(Clone, Debug)]
pub struct Storage {
    /// The object store.
    pub store: Arc<dyn ObjectStore>,
    /// Prefix of the URL's path within the store.
    pub prefix: Path,
}

/// Opens the store for `url`, configured from the environment.
pub fn open(url: &str) -> Result<Storage, StorageError> {
    open_with(url, &BTreeMap::new())
}

/// Opens the store for `url`, configured from the environment and then from `settings`:
/// environment-variable style pairs (`AWS_ACCESS_KEY_ID`, `AZURE_STORAGE_ACCOUNT_KEY`, ...)
/// as a StreamJob's checkpoint Secret holds them. Unknown names are ignored, as the
/// builders ignore unknown environment variables.
pub fn open_with(url: &str, settings: &BTreeMap<String, String>) -> Result<Storage, StorageError> {
    let parsed = Url::parse(url).map_err(|source| StorageError::InvalidUrl {
        url: url.to_owned(),
        source,
    })?;
    let open_err = |source| StorageError::Open {
        url: url.to_owned(),
        source,
    };
    let bucket_prefix = || Path::from(parsed.path().trim_start_matches('/'));
    let (store, prefix): (Arc<dyn ObjectStore>, Path) = match parsed.scheme() {
        "s3" => (
            Arc::new(
                configured(
                    AmazonS3Builder::from_env(),
                    settings,
                    |b, k: AmazonS3ConfigKey, v| b.with_config(k, v),
                )
                .with_url(url)
                .build()
                .map_err(open_err)?,
            ),
            bucket_prefix(),
        ),
        "gs" => (
            Arc::new(
                configured(
                    GoogleCloudStorageBuilder::from_env(),
                    settings,
                    |b, k: GoogleConfigKey, v| b.with_config(k, v),
                )
                .with_url(url)
                .build()
                .map_err(open_err)?,
            ),
            bucket_prefix(),
        ),
        "az" => (
            Arc::new(
                configured(
                    MicrosoftAzureBuilder::from_env(),
                    settings,
                    |b, k: AzureConfigKey, v| b.with_config(k, v),
                )
                .with_url(url)
                .build()
                .map_err(open_err)?,
            ),
            bucket_prefix(),
        ),
        "file" => {
            let dir = parsed.path();
            std::fs::create_dir_all(dir).map_err(|source| StorageError::LocalDir {
                path: dir.to_owned(),
                source,
            })?;
            (
                Arc::new(LocalFileSystem::new_with_prefix(dir).map_err(open_err)?),
                Path::default(),
            )
        }
        _ => return Err(StorageError::UnsupportedScheme(url.to_owned())),
    };
    Ok(Storage { store, prefix })
}

/// Applies every setting whose lower-cased name parses as one of the builder's keys.
fn configured<B, K: std::str::FromStr>(
    builder: B,
    settings: &BTreeMap<String, String>,
    apply: impl Fn(B, K, &str) -> B,
) -> B {
    settings.iter().fold(builder, |builder, (name, value)| {
        match name.to_ascii_lowercase().parse::<K>() {
            Ok(key) => apply(builder, key, value),
            Err(_) => builder,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_schemes_are_refused_by_name() {
        let err = open("ftp://host/x").unwrap_err();
        assert!(matches!(err, StorageError::UnsupportedScheme(_)), "{err}");
        assert!(err.to_string().contains("s3://, gs://, az:// or file://"));
    }

    #[test]
    fn file_urls_create_their_directory_and_use_no_prefix() {
        let dir = std::env::temp_dir().join(format!("sj-storage-{}", std::process::id()));
        let storage = open(&format!("file://{}/nested", dir.display())).unwrap();
        assert!(dir.join("nested").is_dir());
        assert_eq!(storage.prefix, Path::default());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn s3_urls_keep_the_path_as_prefix() {
        // Region and credentials are not needed to build the client, only to use it.
        let storage = open("s3://bucket/some/prefix").unwrap();
        assert_eq!(storage.prefix.as_ref(), "some/prefix");
    }
}
