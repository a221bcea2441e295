"""kopf's diff-base storage: the last handled spec, kept in `status.kopf.last-handled-configuration`.

kopf's default is an annotation. Two costs of it, both measured, put it in the status instead:
- an annotation is its own PATCH of the Training after each handled change, beside the status PATCH
  that names the Job: in the status, both are one request (9.5 -> 8.5 requests per Training at 1,000);
- annotations are 256 KiB in all, but a Training's inputs may be 1 MiB (validation.INPUTS_TOTAL_BYTES),
  and `kubectl apply` keeps a copy of the manifest in an annotation too: the API server refused kopf's
  annotation for a 125 KB input applied with kubectl (tests/test_e2e.py), so kopf kept no diff-base and
  could not tell a later edit (spec.cancel) from what it had handled.
A Training written before this change has only the annotation: it is read when the status holds none.

kopf also builds an object's "essence" (spec, labels, annotations) on every event by deep-copying the whole
body first, status and managedFields included, then dropping them: a fifth of the operator's event loop during
500 Trainings at once (py-spy). `DiffBase` copies only what the essence keeps; the essence is the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import kopf

KEPT_METADATA = ("labels", "annotations")
FIELD = "status.kopf.last-handled-configuration"
LEGACY_PREFIX, LEGACY_KEY = "cog.run", "last-handled-configuration"


class DiffBase(kopf.StatusDiffBaseStorage):
    def __init__(self) -> None:
        super().__init__(field=FIELD)
        self._legacy = kopf.AnnotationsDiffBaseStorage(prefix=LEGACY_PREFIX, key=LEGACY_KEY)

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        extra = list(extra_fields or [])
        meta = body.get("metadata") or {}
        lean = {key: value for key, value in body.items() if key not in ("metadata", "status")}
        lean["metadata"] = {key: meta[key] for key in KEPT_METADATA if key in meta}
        if extra and "status" in body:  # handlers of status fields (none here) need the status kept
            lean["status"] = body["status"]
        essence = super().build(body=kopf.Body(cast(kopf.RawBody, lean)), extra_fields=extra)
        self._legacy.remove_annotations(essence, set(self._legacy.make_keys(LEGACY_KEY, body=body)))
        self._legacy.remove_empty_stanzas(essence)
        return essence

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        """The stored essence; None for anything but a JSON object: kopf raising here leaves the Training unhandled
        for good, its cancel included (the annotation is anyone's to write who creates a Training); with none,
        kopf handles it as new, and its Job, if it has one, is adopted."""
        return _essence(super().fetch, body) or _essence(self._legacy.fetch, body)


def _essence(fetch: Callable[..., kopf.BodyEssence | None], body: kopf.Body) -> kopf.BodyEssence | None:
    try:
        found = fetch(body=body)
    except (ValueError, TypeError):
        return None
    return found if isinstance(found, Mapping) and found else None
