"""Fleet test helpers, one module per concern (this module gathers their names):

- ``fleetdocs``: schema-valid documents as dicts, ``fleet_files``, ``spec_of``;
- ``fleetrepo``: ``FleetRepo``, a real git repo whose changes land through ``--no-ff`` merges;
- ``reports``: status reports as agents send them, and ``simulated_workloads``, the one
  behaviour of every simulated agent;
- ``plansim``: ``PlanSim``, the planner plus simulated agents (pure);
- ``looprig``: ``LoopRig`` and ``Clock``, the real loop on a real repo and SQLite store;
- ``httpagent``: ``HttpAgent``, a simulated agent over HTTP.
"""

from __future__ import annotations

from tests.helpers.fleetdocs import (
    API,
    Doc,
    fake_sha256,
    fleet_doc,
    fleet_files,
    model_doc,
    node_doc,
    nodes_named,
    path_of,
    release_doc,
    rollout_block,
    spec_of,
)
from tests.helpers.fleetrepo import FleetRepo
from tests.helpers.httpagent import HttpAgent
from tests.helpers.looprig import Clock, LoopRig
from tests.helpers.plansim import PlanSim
from tests.helpers.reports import (
    converged_report,
    desired_versions,
    failed_report,
    report_doc,
    simulated_workloads,
    workload_report,
)

__all__ = [
    "API",
    "Clock",
    "Doc",
    "FleetRepo",
    "HttpAgent",
    "LoopRig",
    "PlanSim",
    "converged_report",
    "desired_versions",
    "failed_report",
    "fake_sha256",
    "fleet_doc",
    "fleet_files",
    "model_doc",
    "node_doc",
    "nodes_named",
    "path_of",
    "release_doc",
    "report_doc",
    "rollout_block",
    "simulated_workloads",
    "spec_of",
    "workload_report",
]
