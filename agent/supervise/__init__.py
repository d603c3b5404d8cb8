"""Supervisors: who starts, stops and watches a workload's process (apart from the runtimes,
which only describe how a workload runs).

``supervisor`` holds the seam (the :class:`~agent.supervise.supervisor.Supervisor` protocol
and :class:`~agent.supervise.supervisor.LaunchSpec`); ``child`` runs workloads as child
processes of the agent (the default); ``service`` hands them to systemd or launchd, and
``restart_check`` judges from the service manager's own view that a restart replaced the
process.
"""
