"""Entry points for ``prefect.yaml`` deployments (``prefect deploy``); see the README."""

from forewarn.flows.nightly import nightly, nightly_from_file

__all__ = ["nightly", "nightly_from_file"]
