"""Several ``fleetkeeper serve`` replicas on one PostgreSQL database (issue 14).

Every replica serves the agent and admin APIs; exactly one, the leader, runs the
reconcile loop and the fetches of the fleet repo. The pieces, each on its own
connection (never one of the store's pool):

- ``fencing``: the SQL (a ``fleetkeeper_leader`` row and triggers) that makes the
  database itself refuse a loop write from a replica that is not the current leader;
- ``leader.Leadership``: the session advisory lock, confirmed every ``lease / 10``
  seconds, and the ``fleetkeeper_replicas`` rows that ``fleetkeeper status`` shows;
- ``bus.Bus``: ``LISTEN``/``NOTIFY`` between the replicas (a desired document, a node,
  a report changed; a webhook asks the leader to fetch);
- ``store.ReplicatedStore``: the store wrapper that announces each write on the bus;
- ``follow``: what a replica does with a message (refresh its long-poll hub, its node
  tokens, its report book; wake or trigger the loop when it leads).

On SQLite none of this runs: the single process always leads.
"""
