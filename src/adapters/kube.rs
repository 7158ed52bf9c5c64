//! Kubernetes, through kube-rs: a watch of the Flux Kustomizations (or Argo CD Applications) prenv's
//! wiring creates, read as untyped JSON so the pure status mapping owns every field it reads.

use futures::{Stream, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};

use crate::error::{Error, Result, Sdk};
use crate::model::config::{Config, Engine};
use crate::model::labels;
use crate::model::meta::GENERATOR;

/// What the watch saw.
#[derive(Debug, Clone)]
pub enum Seen {
    /// An object as it is now (added or changed, or listed at the start of a (re-)list).
    Applied(serde_json::Value),
    /// An object removed, as it last was.
    Deleted(serde_json::Value),
    /// A (re-)list begins: what follows until [`Seen::Listed`] is the whole set.
    Listing,
    /// A (re-)list is complete.
    Listed,
    /// The watch failed; it is retried with backoff.
    Interrupted(String),
}

/// The kind prenv's wiring creates for the configured engine.
pub fn api_resource(engine: Engine) -> ApiResource {
    let (group, version, kind, plural) = match engine {
        Engine::Flux => ("kustomize.toolkit.fluxcd.io", "v1", "Kustomization", "kustomizations"),
        Engine::Argocd => ("argoproj.io", "v1alpha1", "Application", "applications"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// A client from the in-cluster service account or KUBECONFIG.
pub async fn connect() -> Result<kube::Client> {
    kube::Client::try_default().await.map_err(|e| Error::Kube {
        action: "connecting (in-cluster service account, or KUBECONFIG)",
        source: Sdk {
            system: "kube",
            code: None,
            message: e.to_string(),
        },
    })
}

/// Watches the objects of `engine`'s kind in `namespace` carrying `selector`, with kube-runtime's
/// default backoff; the stream does not end short of a shutdown.
pub fn watch(
    client: kube::Client,
    engine: Engine,
    namespace: &str,
    selector: &str,
) -> impl Stream<Item = Seen> + use<> {
    let api: Api<DynamicObject> = Api::namespaced_with(client, namespace, &api_resource(engine));
    watcher(api, watcher::Config::default().labels(selector))
        .default_backoff()
        .map(|event| match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                json_of(&o).map_or_else(Seen::Interrupted, Seen::Applied)
            }
            Ok(watcher::Event::Delete(o)) => json_of(&o).map_or_else(Seen::Interrupted, Seen::Deleted),
            Ok(watcher::Event::Init) => Seen::Listing,
            Ok(watcher::Event::InitDone) => Seen::Listed,
            Err(e) => Seen::Interrupted(e.to_string()),
        })
}

/// The objects prenv's wiring creates for `engine` in `namespace`, for the projects `projects`:
/// for one, only its objects (selected by the API server); for several, every object of any
/// project (every environment's object carries both labels and `prenv.dev/env`), each mapped to
/// its project by the watcher.
pub fn environments(
    engine: Engine,
    namespace: &str,
    projects: &[&str],
    client: kube::Client,
) -> impl Stream<Item = Seen> + use<> {
    // An environment's object carries `prenv.dev/env`; a project's Flux Kustomization (the one
    // over its index, `prenv-environments-<project>`) carries the other two labels but not that
    // one, and is no environment to report on.
    let project = match projects {
        [one] => format!("{}={one}", labels::PROJECT),
        _ => labels::PROJECT.to_string(),
    };
    let selector = format!("{}={},{project},{}", labels::MANAGED_BY, GENERATOR, labels::ENV);
    watch(client, engine, namespace, &selector)
}

/// The namespace where `config`'s engine keeps the objects prenv's wiring creates.
pub fn engine_namespace(config: &Config) -> &str {
    match config.engine {
        Engine::Flux => &config.flux.namespace,
        Engine::Argocd => &config.argocd.namespace,
    }
}

fn json_of(object: &DynamicObject) -> std::result::Result<serde_json::Value, String> {
    serde_json::to_value(object).map_err(|e| format!("object not serializable: {e}"))
}
