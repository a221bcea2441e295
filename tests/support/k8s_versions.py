"""The Kubernetes versions the chart, the CRD and the Jobs are validated against."""

from __future__ import annotations

import kubernetes_validate

K8S_VERSIONS = [v for v in kubernetes_validate.utils.all_versions() if tuple(map(int, v.split(".")[:2])) >= (1, 29)]
