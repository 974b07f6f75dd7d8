"""The registry's endpoints, one per action (see `angosd.http.endpoints.base`)."""

from __future__ import annotations

from collections.abc import Mapping

from angosd.actions import Action
from angosd.http.endpoints import blobs, listings, manifests, probes, uploads
from angosd.http.endpoints.base import Context, Endpoint, Handler, HandlerEndpoint

__all__ = ["Context", "Endpoint", "Handler", "endpoints"]


def endpoints(context: Context, extensions: Mapping[Action, Handler | Endpoint] | None = None
              ) -> dict[Action, Endpoint]:
    """The endpoint of each action served; ``extensions`` add or replace some by action
    (extension API, web UI, metrics as bodiless `Handler`s; the token service as an `Endpoint`)."""
    start_upload = uploads.StartUpload(context)
    table: dict[Action, Endpoint] = {
        Action.GET_API_VERSION: probes.ApiVersion(context),
        Action.HEALTHZ: probes.Health(context),
        Action.READYZ: probes.Ready(context),
        Action.LIST_CATALOG: listings.Catalog(context),
        Action.LIST_TAGS: listings.Tags(context),
        Action.GET_REFERRERS: listings.Referrers(context),
        Action.GET_MANIFEST: manifests.GetManifest(context),
        Action.PUT_MANIFEST: manifests.PutManifest(context),
        Action.DELETE_MANIFEST: manifests.DeleteManifest(context),
        Action.GET_BLOB: blobs.GetBlob(context),
        Action.DELETE_BLOB: blobs.DeleteBlob(context),
        Action.START_UPLOAD: start_upload,
        Action.MOUNT_BLOB: start_upload,
        Action.GET_UPLOAD: uploads.GetUpload(context),
        Action.UPDATE_UPLOAD: uploads.UpdateUpload(context),
        Action.COMPLETE_UPLOAD: uploads.CompleteUpload(context),
        Action.CANCEL_UPLOAD: uploads.CancelUpload(context),
    }
    for action, handler in (extensions or {}).items():
        table[action] = handler if isinstance(handler, Endpoint) else HandlerEndpoint(handler)
    return table
