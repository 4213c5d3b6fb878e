//! Kubernetes injection: tollgate added to an unmodified pod as a native sidecar. One mutation
//! ([`mutate`]) behind two doors: `tollgate inject` ([`manifest`], offline, on YAML files) and
//! `tollgate inject-webhook` ([`webhook`], in cluster, answering the API server's AdmissionReview
//! with a JSONPatch). [`settings`] is what the sidecar looks like.

pub mod manifest;
pub mod mutate;
pub mod settings;
pub mod webhook;
