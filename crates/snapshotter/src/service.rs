//! The gRPC edge: containerd's `Snapshots` service, translated to
//! [`Snapshotter`] calls. Each call runs on a blocking thread (the store's
//! write transactions and directory work block), and each error keeps the
//! class containerd's errdefs expect (NotFound, AlreadyExists,
//! FailedPrecondition, InvalidArgument), so `ctr` and the unpacker react to
//! them exactly as to containerd's own snapshotters.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hologram_api::prost_types::Timestamp;
use hologram_api::snapshots as pb;
use hologram_api::snapshots::snapshots_server::Snapshots;
use hologram_api::types as pbt;
use hologram_store::{Info, Kind, StoreError};
use hologram_telemetry::Metrics;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::mounts::Mount;
use crate::snapshotter::Snapshotter;

/// Request ids for log correlation.
static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

/// containerd streams List results in batches; it uses 100 per message.
const LIST_BATCH: usize = 100;

/// The gRPC service; cheap to clone.
#[derive(Clone, Debug)]
pub struct SnapshotsService {
    sn: Arc<Snapshotter>,
    metrics: Option<Arc<Metrics>>,
}

impl SnapshotsService {
    pub fn new(sn: Arc<Snapshotter>, metrics: Option<Arc<Metrics>>) -> Self {
        SnapshotsService { sn, metrics }
    }

    /// Runs `f` on a blocking thread and maps its error to a gRPC status.
    async fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Snapshotter) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let sn = Arc::clone(&self.sn);
        let started = std::time::Instant::now();
        // Every log line of this call carries its request id (visible at
        // debug level, e.g. with HOLOGRAM_VERBOSE=1).
        let span = tracing::debug_span!(
            "rpc",
            op,
            req = NEXT_REQUEST.fetch_add(1, Ordering::Relaxed)
        );
        let out = tokio::task::spawn_blocking(move || span.in_scope(|| f(&sn)))
            .await
            .map_err(|e| Status::internal(format!("{op}: worker failed: {e}")))?;
        if let Some(m) = &self.metrics {
            let result = match &out {
                Ok(_) => "ok",
                Err(StoreError::NotFound(_)) => "not_found",
                Err(StoreError::AlreadyExists(_)) => "already_exists",
                Err(StoreError::FailedPrecondition(_)) => "failed_precondition",
                Err(StoreError::InvalidArgument(_)) => "invalid_argument",
                Err(StoreError::Internal(_)) => "error",
            };
            m.snapshotter_op(op, result, started.elapsed().as_secs_f64());
        }
        match out {
            Ok(v) => {
                tracing::debug!(op, "ok");
                Ok(v)
            }
            Err(e) => {
                let status = to_status(e);
                match status.code() {
                    tonic::Code::Internal => {
                        tracing::error!(op, error = %status.message(), "failed")
                    }
                    _ => {
                        tracing::debug!(op, code = ?status.code(), error = %status.message(), "refused")
                    }
                }
                Err(status)
            }
        }
    }
}

/// Maps a store error to the gRPC code containerd's errdefs.FromGRPC turns
/// back into the same class.
pub fn to_status(e: StoreError) -> Status {
    let msg = e.to_string();
    match e {
        StoreError::NotFound(_) => Status::not_found(msg),
        StoreError::AlreadyExists(_) => Status::already_exists(msg),
        StoreError::FailedPrecondition(_) => Status::failed_precondition(msg),
        StoreError::InvalidArgument(_) => Status::invalid_argument(msg),
        StoreError::Internal(_) => Status::internal(msg),
    }
}

fn to_pb_mounts(ms: Vec<Mount>) -> Vec<pbt::Mount> {
    ms.into_iter()
        .map(|m| pbt::Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn labels(m: HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

fn ts(ns: i64) -> Timestamp {
    Timestamp {
        seconds: ns.div_euclid(1_000_000_000),
        nanos: i32::try_from(ns.rem_euclid(1_000_000_000)).unwrap_or(0),
    }
}

fn ts_ns(t: Option<&Timestamp>) -> i64 {
    t.map_or(0, |t| {
        t.seconds
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(t.nanos))
    })
}

fn kind_to_pb(k: Kind) -> pb::Kind {
    match k {
        Kind::View => pb::Kind::View,
        Kind::Active => pb::Kind::Active,
        Kind::Committed => pb::Kind::Committed,
    }
}

fn info_to_pb(i: Info) -> pb::Info {
    pb::Info {
        name: i.name,
        parent: i.parent,
        kind: kind_to_pb(i.kind).into(),
        created_at: Some(ts(i.created_ns)),
        updated_at: Some(ts(i.updated_ns)),
        labels: i.labels.into_iter().collect(),
    }
}

fn info_from_pb(i: pb::Info) -> Info {
    let kind = match pb::Kind::try_from(i.kind) {
        Ok(pb::Kind::View) => Kind::View,
        Ok(pb::Kind::Committed) => Kind::Committed,
        _ => Kind::Active, // immutable: ignored by update
    };
    Info {
        name: i.name,
        parent: i.parent,
        kind,
        created_ns: ts_ns(i.created_at.as_ref()),
        updated_ns: ts_ns(i.updated_at.as_ref()),
        labels: labels(i.labels),
    }
}

type ListStream = Pin<Box<dyn Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Snapshots for SnapshotsService {
    async fn prepare(
        &self,
        req: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = req.into_inner();
        tracing::debug!(key = %r.key, parent = %r.parent, "prepare");
        let mounts = self
            .run("prepare", move |sn| {
                sn.create(Kind::Active, &r.key, &r.parent, labels(r.labels))
            })
            .await?;
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: to_pb_mounts(mounts),
        }))
    }

    async fn view(
        &self,
        req: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = req.into_inner();
        tracing::debug!(key = %r.key, parent = %r.parent, "view");
        let mounts = self
            .run("view", move |sn| {
                sn.create(Kind::View, &r.key, &r.parent, labels(r.labels))
            })
            .await?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: to_pb_mounts(mounts),
        }))
    }

    async fn mounts(
        &self,
        req: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let key = req.into_inner().key;
        let mounts = self.run("mounts", move |sn| sn.mounts_of(&key)).await?;
        Ok(Response::new(pb::MountsResponse {
            mounts: to_pb_mounts(mounts),
        }))
    }

    async fn commit(
        &self,
        req: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        tracing::debug!(key = %r.key, name = %r.name, "commit");
        self.run("commit", move |sn| {
            sn.commit(&r.name, &r.key, labels(r.labels))
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let key = req.into_inner().key;
        tracing::debug!(key = %key, "remove");
        self.run("remove", move |sn| sn.remove(&key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let key = req.into_inner().key;
        let info = self.run("stat", move |sn| sn.stat(&key)).await?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(info_to_pb(info)),
        }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = req.into_inner();
        let info = r.info.ok_or_else(|| {
            Status::invalid_argument("update: info is required: invalid argument")
        })?;
        let info = info_from_pb(info);
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        tracing::debug!(key = %info.name, ?paths, "update");
        let info = self
            .run("update", move |sn| sn.update(&info, &paths))
            .await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(info_to_pb(info)),
        }))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let filters = req.into_inner().filters;
        tracing::debug!(?filters, "list");
        let infos = self.run("list", move |sn| sn.walk(&filters)).await?;
        let mut batches = Vec::new();
        let mut it = infos.into_iter().map(info_to_pb).peekable();
        while it.peek().is_some() {
            let info: Vec<pb::Info> = it.by_ref().take(LIST_BATCH).collect();
            batches.push(Ok(pb::ListSnapshotsResponse { info }));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(
        &self,
        req: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let key = req.into_inner().key;
        let u = self.run("usage", move |sn| sn.usage(&key)).await?;
        Ok(Response::new(pb::UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(&self, _req: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        let removed = self.run("cleanup", |sn| sn.cleanup()).await?;
        if !removed.is_empty() {
            tracing::info!(
                count = removed.len(),
                "cleanup reclaimed orphan snapshot directories"
            );
        }
        Ok(Response::new(()))
    }
}

/// How long a graceful shutdown waits for in-flight calls.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
