# The cog-training-operator image: runs the operator (`cogtrain operator`) and the training Pods'
# driver container (`cogtrain drive`). Build: docker build -t ghcr.io/cog-training-operator/cogtrain:0.1.0 .
#
# Only the base dependencies are installed (not the `local` or `test` extras): the operator and
# the driver need neither Cog nor torch. Every dependency ships wheels, so no compiler is needed.

FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
# The dependencies' versions are pinned in pyproject.toml.
RUN pip install --no-cache-dir . \
    && cogtrain --version


FROM python:3.11-slim-bookworm

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="cog-training-operator" \
      org.opencontainers.image.description="Kubernetes operator that runs the training interface of Cog models as GPU Jobs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="cog-training-operator"

# The virtual environment alone: no compiler, no pip cache, no sources.
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The same numeric user the chart and the training Jobs run as (runAsNonRoot needs a number).
USER 65532:65532
WORKDIR /tmp

ENTRYPOINT ["cogtrain"]
CMD ["operator", "--all-namespaces"]
